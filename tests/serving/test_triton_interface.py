"""The generate model's request parsing (TensorRT-LLM's names) without a server: defaults, the stop
tokens, and a message naming the field for each bad request."""

import numpy as np
import pytest

from nemotron_deploy.runtime.sampling import Sampling
from nemotron_deploy.runtime.serving.triton.interface import RequestError, parse_generate_request

LIMITS = dict(vocab_size=100, max_length=16, eos_token_ids=(2,))


def _parse(**tensors):
    arrays = {name: np.array(value) for name, value in tensors.items()}
    return parse_generate_request(arrays.get, **LIMITS)


def test_defaults_are_greedy_with_the_model_eos():
    r = _parse(input_ids=[[5, 6, 7]], request_output_len=[[4]])
    assert r.prompt == [5, 6, 7] and r.max_new_tokens == 4 and not r.streaming
    assert r.sampling == Sampling() and r.sampling.greedy and r.stop_token_ids == {2}


def test_fields_as_tensorrt_llm_clients_send_them():
    r = _parse(
        input_ids=[[5, 6, 7, 0, 0]],
        input_lengths=[[3]],
        request_output_len=[[8]],
        runtime_top_k=[[40]],
        runtime_top_p=[[0.9]],
        temperature=[[0.7]],
        random_seed=[[np.uint64(2**63 + 5)]],
        streaming=[[True]],
        end_id=[[9]],
    )
    assert r.prompt == [5, 6, 7] and r.streaming and r.stop_token_ids == {9}
    s = r.sampling
    assert (s.temperature, s.top_k, s.top_p, s.seed) == (pytest.approx(0.7), 40, pytest.approx(0.9), 2**63 + 5) and not s.greedy
    assert _parse(input_ids=[[5]], request_output_len=[[1]], end_id=[[-1]]).stop_token_ids == frozenset()
    assert _parse(input_ids=[[5]], request_output_len=[[1]], ignore_eos=[[True]]).stop_token_ids == frozenset()
    assert _parse(input_ids=[[5, 6, 7]], request_output_len=[[1]], snapshot_at=[[2]]).snapshot_at == (2,)


@pytest.mark.parametrize(
    "tensors,message",
    [
        (dict(request_output_len=[[4]]), "input_ids: missing"),
        (dict(input_ids=[[5], [6]], request_output_len=[[4]]), "input_ids: a batch of 2 in one request"),
        (dict(input_ids=[[5, 100]], request_output_len=[[4]]), "input_ids: token id 100 is outside the vocabulary (0..99)"),
        (dict(input_ids=[[5, -1]], request_output_len=[[4]]), "input_ids: token id -1 is outside"),
        (dict(input_ids=np.zeros((1, 0), np.int32), request_output_len=[[4]]), "input_ids: empty prompt"),
        (dict(input_ids=[[5] * 16], request_output_len=[[4]]), "input_ids: 16 tokens leave no room"),
        (dict(input_ids=[[5]]), "request_output_len: missing"),
        (dict(input_ids=[[5]], request_output_len=[[0]]), "request_output_len: 0; expected >= 1"),
        (dict(input_ids=[[5]], request_output_len=[[2, 3]]), "request_output_len: expected one value per request"),
        (dict(input_ids=[[5]], request_output_len=[[2]], input_lengths=[[2]]), "input_lengths: 2, but input_ids has 1 tokens"),
        (dict(input_ids=[[5]], request_output_len=[[2]], runtime_top_k=[[-1]]), "runtime_top_k: -1"),
        (dict(input_ids=[[5]], request_output_len=[[2]], runtime_top_p=[[0.0]]), "runtime_top_p: 0.0; expected a number in (0, 1]"),
        (dict(input_ids=[[5]], request_output_len=[[2]], temperature=[[-1.0]]), "temperature: -1.0; expected a number > 0"),
        (dict(input_ids=[[5, 6]], request_output_len=[[2]], snapshot_at=[[3]]), "snapshot_at: 3 is not a prompt length (1..2)"),
    ],
)
def test_bad_requests_name_the_field(tensors, message):
    with pytest.raises(RequestError) as error:
        _parse(**tensors)
    assert message in str(error.value)
