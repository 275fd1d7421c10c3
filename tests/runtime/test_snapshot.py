"""State snapshots: a sequence continued from the state of its first tokens gets the tokens it gets
from the start (transformers' greedy tokens; the runtime's seeded sampling), in a batch with others
or alone; snapshot files round-trip and a damaged or foreign one is one clear error."""

import numpy as np
import pytest
from hf_oracle import hf_greedy, random_prompt

from nemotron_deploy.runtime.sampling import Sampling
from nemotron_deploy.runtime.session import Session
from nemotron_deploy.runtime.snapshot import SnapshotError

HISTORY = random_prompt(13, seed=5)  # an earlier turn
TURN = HISTORY + random_prompt(9, seed=6)  # the next one: the history and new tokens
OTHER = random_prompt(7, seed=7)


@pytest.fixture(scope="module")
def session(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups")  # mamba, MoE and attention: every state kind
    return ref, Session(artifact)


class CountingSteps:
    """Wraps a backend, counting the prompt tokens its prefill calls compute."""

    def __init__(self, backend):
        self.inner, self.prompt_tokens = backend, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, graph, ids, mask, state):
        if graph == "prefill":
            self.prompt_tokens += ids.shape[0] * ids.shape[1]
        return self.inner.step(graph, ids, mask, state)


@pytest.mark.parametrize("chunk", [None, 4])  # 4: pieces that do not align with the snapshot's 13 tokens
def test_continuing_from_a_snapshot_equals_transformers(session, chunk, monkeypatch):
    ref, sess = session
    snap = sess.snapshot(HISTORY, prefill_chunk_size=chunk)
    assert snap.tokens == tuple(HISTORY) and snap.logits.shape == (sess.vocab_size,)
    counting = CountingSteps(sess.backend)
    monkeypatch.setattr(sess, "backend", counting)
    out = sess.generate([TURN], 6, start=snap, prefill_chunk_size=chunk)
    assert out.new_token_ids[0] == hf_greedy(ref, TURN, 6)
    assert counting.prompt_tokens == len(TURN) - len(HISTORY)  # only the new tokens


def test_a_whole_prompt_snapshot_needs_no_prefill(session, monkeypatch):
    ref, sess = session
    snap = sess.snapshot(TURN)
    counting = CountingSteps(sess.backend)
    monkeypatch.setattr(sess, "backend", counting)
    out = sess.generate([TURN], 5, start=snap)
    assert out.new_token_ids[0] == hf_greedy(ref, TURN, 5) and counting.prompt_tokens == 0


def test_restored_and_new_rows_share_a_batch(session):
    """Restored rows (K/V as long as their snapshot) and new left-padded rows in one batch."""
    ref, sess = session
    snap = sess.snapshot(HISTORY)
    prompts = [TURN, OTHER, HISTORY]
    out = sess.generate(prompts, 5, start=[snap, None, snap])
    assert out.new_token_ids == [hf_greedy(ref, p, 5) for p in prompts]


def test_seeded_sampling_is_unchanged_by_a_snapshot(session):
    _, sess = session
    sampling = Sampling(temperature=0.8, top_k=30, seed=99)
    snap = sess.snapshot(HISTORY)
    assert sess.generate([TURN], 8, sampling, start=snap).new_token_ids == sess.generate([TURN], 8, sampling).new_token_ids


def test_snapshot_file_round_trip(session, tmp_path):
    ref, sess = session
    snap = sess.snapshot(HISTORY)
    path = sess.save_state(snap, tmp_path / "turn1.safetensors")
    back = sess.load_state(path)
    assert back.tokens == snap.tokens and back.model == snap.model
    assert set(back.states) == {s.name for s in sess.manifest.states}
    assert all(np.array_equal(back.states[n], snap.states[n]) for n in snap.states) and np.array_equal(back.logits, snap.logits)
    assert sess.generate([TURN], 5, start=back).new_token_ids[0] == hf_greedy(ref, TURN, 5)


def test_damaged_and_foreign_snapshots_are_refused(session, artifacts, tmp_path):
    _, sess = session
    snap = sess.snapshot(HISTORY)
    path = sess.save_state(snap, tmp_path / "s.safetensors")
    data = path.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated.safetensors: not a readable snapshot file"):
        sess.load_state(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(SnapshotError, match="garbage.safetensors"):
        sess.load_state(garbage)
    with pytest.raises(SnapshotError, match="no such snapshot file"):
        sess.load_state(tmp_path / "missing.safetensors")

    _, _, other_artifact = artifacts("dense_mlp_biases")
    other = Session(other_artifact)
    with pytest.raises(SnapshotError, match="saved from another model"):
        other.load_state(path)
    with pytest.raises(SnapshotError, match="another model"):
        other.generate([TURN], 2, start=snap)

    with pytest.raises(SnapshotError, match="not the first tokens of the prompt"):
        sess.generate([OTHER + TURN], 2, start=snap)

    # a state of the wrong shape: the file is well-formed, its contents are not this model's
    bad = snap.states.copy()
    name = next(n for n in bad if "ssm" in n or "conv" in n)
    bad[name] = bad[name][..., :-1].copy()
    wrong = type(snap)(snap.model, snap.tokens, bad, snap.logits)
    wrong.save(tmp_path / "wrong.safetensors")
    with pytest.raises(SnapshotError, match=f"tensor 'state/{name}' is float32"):
        sess.load_state(tmp_path / "wrong.safetensors")
