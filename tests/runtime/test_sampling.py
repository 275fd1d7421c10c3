"""The sampler against its definition: greedy, top-k, top-p, temperature, seeding."""

import numpy as np
import pytest

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.sampling import Sampler, Sampling

LOGITS = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.2, 0.5]], dtype=np.float32))


def _draws(config, n=4000):
    sampler = Sampler(config)
    return np.stack([sampler(LOGITS) for _ in range(n)])  # (n, 2)


def test_greedy_and_degenerate_filters_are_argmax():
    assert Sampler(Sampling())(LOGITS).tolist() == [0, 4]
    assert set(_draws(Sampling(greedy=False, top_k=1), 50).ravel().tolist()) == {0, 4}
    assert np.all(_draws(Sampling(greedy=False, top_p=0.3), 50) == [0, 4])


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    a = _draws(Sampling(greedy=False, seed=3), 200)
    assert np.array_equal(a, _draws(Sampling(greedy=False, seed=3), 200))
    assert not np.array_equal(a, _draws(Sampling(greedy=False, seed=4), 200))


def test_frequencies_follow_the_filtered_distribution():
    draws = _draws(Sampling(greedy=False, seed=0))[:, 0]
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.03)
    topk = _draws(Sampling(greedy=False, top_k=2, seed=1))[:, 0]
    np.testing.assert_allclose(np.bincount(topk, minlength=5) / len(topk), [5 / 7, 2 / 7, 0, 0, 0], atol=0.03)
    # top_p 0.8: smallest set reaching 0.8 is {0, 1, 2} (0.85)
    topp = _draws(Sampling(greedy=False, top_p=0.8, seed=2))[:, 0]
    np.testing.assert_allclose(np.bincount(topp, minlength=5) / len(topp), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], atol=0.03)
    # temperature 0.5 squares the probabilities before renormalising
    hot = _draws(Sampling(greedy=False, temperature=0.5, seed=5))[:, 0]
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(np.bincount(hot, minlength=5) / len(hot), p / p.sum(), atol=0.03)


@pytest.mark.parametrize("kw", [{"temperature": 0}, {"top_k": -1}, {"top_p": 0}, {"top_p": 1.5}])
def test_invalid_settings(kw):
    with pytest.raises(NemotronDeployError):
        Sampling(greedy=False, **kw)
