"""The step model against transformers 5.23 (pure-torch path) on small random checkpoints, through the
runtime's one decode loop (`TorchBackend`)."""

import numpy as np
import pytest
import torch
from helpers import relative_error
from hf_oracle import hf_greedy, hf_logits, random_prompt

from nemotron_deploy.exporter.checkpoint import load_model
from nemotron_deploy.exporter.modeling.mamba import ssd_chunked, ssd_recurrent
from nemotron_deploy.runtime.backends.torch_backend import TorchBackend, greedy_decode
from nemotron_deploy.runtime.decode import left_pad, prefill


def test_full_sequence_logits_match_transformers(hf_checkpoints, config_name):
    """Prompt of 23 tokens: longer than every chunk_size and a multiple of none."""
    ref_model, path = hf_checkpoints(config_name)
    model = load_model(path, "float32", all_logits=True)
    ids = torch.tensor([random_prompt(23, 1), random_prompt(23, 2)])
    ref = hf_logits(ref_model, ids)
    got, _ = model.step(ids, torch.ones_like(ids), model.initial_state(2))
    err = relative_error(got, ref)
    print(f"{config_name}: max |logit error| / max |logit| = {err:.2e}")
    assert got.shape == ref.shape and err <= 1e-4


def test_greedy_decode_matches_transformers_generate(hf_checkpoints, config_name):
    ref_model, path = hf_checkpoints(config_name)
    model = load_model(path, "float32")
    for seed, length in ((3, 19), (4, 7)):
        prompt = random_prompt(length, seed)
        expected = hf_greedy(ref_model, prompt, 40)
        assert greedy_decode(model, [prompt], 40)[0] == expected


def test_decode_step_logits_match_transformers(hf_checkpoints):
    """Each decode step against transformers' own cached step (its recurrent path, dt not clamped)."""
    ref_model, path = hf_checkpoints("hybrid_moe_groups")
    backend = TorchBackend(load_model(path, "float32"))
    ids = torch.tensor([random_prompt(17, 5)])
    with torch.no_grad():
        out = ref_model(ids, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _, state = prefill(backend, ids.numpy(), np.ones_like(ids.numpy()))
        mask = torch.ones_like(ids)
        errs = []
        for _ in range(12):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            ref = ref_model(token, past_key_values=cache, use_cache=True, attention_mask=mask).logits
            got, state = backend.step("decode", token.numpy(), mask.numpy(), state)
            errs.append(relative_error(got, ref[:, -1]))
            token = ref[:, -1:].argmax(-1)
    print(f"max relative decode-step error {max(errs):.2e}")
    assert max(errs) <= 1e-4


def test_chunked_prefill_equals_one_shot(hf_checkpoints, config_name):
    """Pieces of any length, 1 token included (the last piece of 26 tokens in chunks of 5; all of chunk 1)."""
    _, path = hf_checkpoints(config_name)
    backend = TorchBackend(load_model(path, "float32"))
    ids, mask = left_pad([random_prompt(26, 6), random_prompt(26, 7)], 0)
    one_logits, one_state = prefill(backend, ids, mask)
    for chunk in (1, 2, 5, 9, 13, 23):
        logits, state = prefill(backend, ids, mask, chunk)
        assert relative_error(logits, one_logits) <= 1e-5, chunk
        for name, tensor in one_state.items():
            assert torch.allclose(state[name], tensor, rtol=1e-4, atol=1e-5), (chunk, name)


def test_prefill_with_one_token_pieces_matches_transformers_generate(hf_checkpoints):
    """1-token prefill pieces are prefill steps (chunked scan, prefill dt clamp), not decode steps: the
    tokens equal transformers' and the unsplit prefill's, with one-token pieces first, inside and last."""
    ref_model, path = hf_checkpoints("hybrid_moe_groups")  # dt_bias exercises the prefill dt clamp
    model = load_model(path, "float32")
    prompt = random_prompt(17, 8)
    expected = hf_greedy(ref_model, prompt, 16)
    assert greedy_decode(model, [prompt], 16) == [expected]
    for chunk in (1, 2, 4):  # 17 tokens: the last piece is one token
        assert greedy_decode(model, [prompt], 16, prefill_chunk_size=chunk) == [expected], chunk


def test_left_padded_batch_equals_each_prompt_alone(hf_checkpoints, config_name):
    _, path = hf_checkpoints(config_name)
    model = load_model(path, "float32")
    backend = TorchBackend(model)
    prompts = [random_prompt(n, 10 + n) for n in (21, 2, 9, 14)]
    batch = greedy_decode(model, prompts, 24)
    batch_chunked = greedy_decode(model, prompts, 24, prefill_chunk_size=8)
    ids, mask = left_pad(prompts, 0)
    logits, state = prefill(backend, ids, mask)
    for row, prompt in enumerate(prompts):
        alone = greedy_decode(model, [prompt], 24)[0]
        assert batch[row] == alone and batch_chunked[row] == alone, row
        single = np.array([prompt])
        logits_1, state_1 = prefill(backend, single, np.ones_like(single))
        assert relative_error(logits[row], logits_1[0]) <= 1e-5
        for name, tensor in state_1.items():
            got = state[name][row]
            if name.endswith((".key", ".value")):  # the padded positions' K/V are masked, not compared
                got = got[:, -len(prompt) :]
            assert torch.allclose(got, tensor[0], rtol=1e-4, atol=1e-5), (row, name)


@pytest.mark.parametrize("t, chunk", [(1, 4), (7, 4), (16, 4), (13, 32)])
def test_chunked_scan_equals_token_by_token_recurrence(t, chunk):
    g = torch.Generator().manual_seed(t)
    b, h, p, n, groups = 2, 6, 5, 7, 3
    x = torch.randn(b, t, h, p, generator=g)
    dt = torch.rand(b, t, h, generator=g) * 0.5
    A = -torch.rand(h, generator=g) * 3
    Bm, Cm = torch.randn(b, t, groups, n, generator=g), torch.randn(b, t, groups, n, generator=g)
    state0 = torch.randn(b, h, p, n, generator=g)
    y, final = ssd_chunked(x, dt, A, Bm, Cm, state0, chunk)
    state, ys = state0, []
    for i in range(t):
        yi, state = ssd_recurrent(x[:, i : i + 1], dt[:, i : i + 1], A, Bm[:, i : i + 1], Cm[:, i : i + 1], state)
        ys.append(yi)
    assert torch.allclose(y, torch.cat(ys, 1), rtol=1e-4, atol=1e-5)
    assert torch.allclose(final, state, rtol=1e-4, atol=1e-5)
