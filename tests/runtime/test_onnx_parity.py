"""Exported ONNX artifacts on onnxruntime's CPU provider against transformers 5.23."""

import numpy as np
import pytest
import torch
from helpers import relative_error
from hf_oracle import hf_greedy, hf_logits, make_checkpoint, random_prompt

from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.runtime.backends.interface import Backend
from nemotron_deploy.runtime.decode import left_pad, prefill
from nemotron_deploy.runtime.session import Session


def test_greedy_batch_matches_transformers_generate(artifacts, config_name):
    """A batch of prompts of different lengths, 64 new tokens each, against transformers one by one."""
    ref, _, artifact = artifacts(config_name)
    session = Session(artifact)
    prompts = [random_prompt(19, 1), random_prompt(6, 2), random_prompt(11, 3)]
    result = session.generate(prompts, max_new_tokens=64, ignore_eos=True)
    for prompt, got in zip(prompts, result.new_token_ids):
        assert got == hf_greedy(ref, prompt, 64)


def test_prefill_and_decode_logits_match_transformers(artifacts, config_name):
    ref, _, artifact = artifacts(config_name)
    backend = Session(artifact).backend
    ids = np.array([random_prompt(23, 4)])
    logits, state = prefill(backend, ids, np.ones_like(ids))
    errs = [relative_error(logits, hf_logits(ref, torch.from_numpy(ids))[:, -1])]
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), use_cache=True)
        cache, token, mask = out.past_key_values, out.logits[:, -1:].argmax(-1), np.ones_like(ids)
        for _ in range(8):
            mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
            expected = ref(token, past_key_values=cache, use_cache=True, attention_mask=torch.from_numpy(mask)).logits[:, -1]
            logits, state = backend.step("decode", token.numpy(), mask, state)
            errs.append(relative_error(logits, expected))
            token = expected[:, None].argmax(-1)
    print(f"{config_name}: max relative logit error prefill {errs[0]:.1e}, decode {max(errs[1:]):.1e}")
    assert max(errs) <= 1e-4


def test_sharded_checkpoint_exports_and_matches(tmp_path):
    ref, ckpt = make_checkpoint("hybrid_moe_groups", tmp_path / "ckpt", seed=7, max_shard_size="40KB")
    artifact = export_artifact(ckpt, tmp_path / "onnx", progress=False)
    prompt = random_prompt(15, 9)
    assert Session(artifact).generate([prompt], 64, ignore_eos=True).new_token_ids[0] == hf_greedy(ref, prompt, 64)


def test_chunked_prefill_equals_one_shot(artifacts):
    _, _, artifact = artifacts("hybrid_moe_groups")
    backend = Session(artifact).backend
    ids, mask = left_pad([random_prompt(26, 5), random_prompt(17, 6)], 0)
    one_logits, one_state = prefill(backend, ids, mask)
    for chunk in (2, 5, 7, 16):  # 26 = 5 * 5 + 1: no last piece of one token (that is a decode step)
        logits, state = prefill(backend, ids, mask, chunk)
        assert relative_error(logits, one_logits) <= 1e-5, chunk
        for name, value in one_state.items():
            np.testing.assert_allclose(state[name], value, rtol=1e-4, atol=1e-5, err_msg=f"{chunk} {name}")
    session = Session(artifact)
    prompts = [random_prompt(26, 5), random_prompt(17, 6)]
    assert session.generate(prompts, 16, prefill_chunk_size=4).new_token_ids == session.generate(prompts, 16).new_token_ids


def test_prefill_pieces_respect_the_backends_limit(artifacts):
    """One prefill splitter for every backend: pieces of at most the backend's `max_prefill_tokens` (a
    TensorRT engine's profile), also under a larger chunk size; the tokens do not change."""
    _, _, artifact = artifacts("hybrid_moe_groups")
    session = Session(artifact)
    prompts = [random_prompt(11, 5), random_prompt(7, 6)]
    want = session.generate(prompts, 8, ignore_eos=True).new_token_ids
    inner, calls = session.backend, []

    class Limited(Backend):
        max_prefill_tokens = 4
        one_token_is_decode = inner.one_token_is_decode  # the float32 artifact's one step graph: True

        def initial_state(self, batch):
            return inner.initial_state(batch)

        def step(self, graph, ids, mask, state):
            calls.append((graph, ids.shape[1]))
            return inner.step(graph, ids, mask, state)

    session.backend = Limited()
    for chunk, pieces in ((None, [4, 4, 3]), (3, [3, 3, 3, 2]), (6, [4, 4, 3]), (2, [2, 2, 2, 2, 3]), (5, [4, 4, 3])):
        calls.clear()
        assert session.generate(prompts, 8, ignore_eos=True, prefill_chunk_size=chunk).new_token_ids == want
        assert [n for graph, n in calls if graph == "prefill"] == pieces, chunk


# Tolerance reached by float16 exports (last-position logits relative to their max, against fp32
# transformers on the same weights); see the printed figure. bfloat16 is refused for onnxruntime.
HALF_TOLERANCE = {"float16": 1e-2}


@pytest.mark.filterwarnings("ignore:.*float16 artifact on onnxruntime's CPU provider:UserWarning")  # correctness, not speed, here
@pytest.mark.parametrize("dtype", sorted(HALF_TOLERANCE))
def test_half_precision_exports(artifacts, dtype):
    ref, _, artifact = artifacts("hybrid_moe_groups", dtype)
    session = Session(artifact)
    assert session.manifest.dtype == dtype
    ids = np.array([random_prompt(21, 8)])
    logits, _ = prefill(session.backend, ids, np.ones_like(ids))
    err = relative_error(logits, hf_logits(ref, torch.from_numpy(ids))[:, -1])
    print(f"{dtype}: max relative logit error {err:.1e}")
    assert err <= HALF_TOLERANCE[dtype]
    assert len(session.generate([random_prompt(9, 3)], 8, ignore_eos=True).new_token_ids[0]) == 8


def test_bfloat16_is_refused_for_onnxruntime(hf_checkpoints, tmp_path):
    from nemotron_deploy.runtime.artifact.errors import NemotronDeployError

    _, ckpt = hf_checkpoints("dense_mlp_biases")
    with pytest.raises(NemotronDeployError, match="no bfloat16 kernels"):
        export_artifact(ckpt, tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert not (tmp_path / "bf16").exists()
