"""`export --kv-in-place`: attention as onnxruntime's GroupQueryAttention, its K/V cache a buffer that
each step appends to in place (runtime/kv_buffers.py), against transformers and the concat artifact."""

import numpy as np
import pytest
from hf_oracle import hf_greedy, random_prompt

from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.decode import left_pad, prefill
from nemotron_deploy.runtime.kv_buffers import KVBuffers
from nemotron_deploy.runtime.session import Session


def _kv(state):
    return sorted(name for name in state if name.endswith(".key") or name.endswith(".value"))


def test_greedy_batch_matches_transformers_generate(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups", kv_in_place=True)  # mamba, MoE and attention layers
    session = Session(artifact)
    assert session.manifest.kv_cache == "in_place"
    prompts = [random_prompt(19, 1), random_prompt(6, 2), random_prompt(11, 3)]
    result = session.generate(prompts, max_new_tokens=64, ignore_eos=True)
    for prompt, got in zip(prompts, result.new_token_ids):
        assert got == hf_greedy(ref, prompt, 64)


def test_decode_appends_to_one_buffer_and_equals_the_concat_artifact(artifacts):
    """Decode steps write into the buffer the previous state views (no new K/V per step); logits and
    states equal the concat artifact's step for step, through a buffer that grows."""
    _, _, concat = artifacts("hybrid_moe_groups")
    _, _, in_place = artifacts("hybrid_moe_groups", kv_in_place=True)
    a, b = Session(concat).backend, Session(in_place).backend
    ids, mask = left_pad([random_prompt(9, 4), random_prompt(5, 5)], 0)
    la, sa = prefill(a, ids, mask)
    lb, sb = prefill(b, ids, mask)
    kv = _kv(sb)
    assert kv, "the checkpoint has attention layers"
    buffers = {sb[name].base.shape[2] for name in kv}
    appended = grown = 0
    for _ in range(520):  # past the first buffer (512 positions for this prompt)
        token = la.argmax(-1)[:, None]
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        before = {name: sb[name].base for name in kv}
        la, sa = a.step("decode", token, mask, sa)
        lb, sb = b.step("decode", token, mask, sb)
        np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-5)
        for name in sa:
            np.testing.assert_allclose(sb[name], sa[name], rtol=1e-4, atol=1e-5, err_msg=name)
        same = [sb[name].base is before[name] for name in kv]
        appended += all(same)
        grown += not any(same)
        buffers |= {sb[name].base.shape[2] for name in kv}
    assert appended >= 515 and grown >= 1, (appended, grown)
    assert len(buffers) >= 2


def test_a_state_stepped_again_leaves_the_newer_one_intact(artifacts):
    """Stepping an older state (a branch: the prefix cache, a retry) copies its K/V instead of writing
    over positions that a newer state of the same buffer holds."""
    _, _, concat = artifacts("hybrid_moe_groups")
    _, _, in_place = artifacts("hybrid_moe_groups", kv_in_place=True)
    a, b = Session(concat).backend, Session(in_place).backend
    ids = np.array([random_prompt(12, 6)])
    _, older_a = a.step("prefill", ids[:, :6], np.ones((1, 6), np.int64), a.initial_state(1))
    _, older = b.step("prefill", ids[:, :6], np.ones((1, 6), np.int64), b.initial_state(1))
    mask = np.ones((1, 12), np.int64)
    _, newer = b.step("prefill", ids[:, 6:], mask, older)
    kept = {name: x.copy() for name, x in newer.items()}
    branch_ids = ids[:, ::-1][:, :6].copy()
    logits_a, _ = a.step("prefill", branch_ids, mask, older_a)
    logits_b, _ = b.step("prefill", branch_ids, mask, older)
    np.testing.assert_allclose(logits_b, logits_a, rtol=1e-4, atol=1e-5)
    for name, x in kept.items():
        np.testing.assert_array_equal(newer[name], x, err_msg=name)


def test_sequences_stepped_in_turn_each_append_to_their_own_buffer(artifacts):
    """Two generations on one backend, a step each in turn (two requests served by one process)."""
    _, _, concat = artifacts("hybrid_moe_groups")
    _, _, in_place = artifacts("hybrid_moe_groups", kv_in_place=True)
    a, b = Session(concat).backend, Session(in_place).backend
    runs = []
    for seed in (7, 8):
        ids = np.array([random_prompt(6, seed)])
        mask = np.ones_like(ids)
        runs.append([mask, *prefill(a, ids, mask), *prefill(b, ids, mask)])
    for _ in range(5):
        for run in runs:
            mask, la, sa, lb, sb = run
            token = la.argmax(-1)[:, None]
            mask = np.concatenate([mask, np.ones_like(token)], axis=1)
            la, sa = a.step("decode", token, mask, sa)
            bases = {name: sb[name].base for name in _kv(sb)}
            lb, sb = b.step("decode", token, mask, sb)
            assert all(sb[name].base is base for name, base in bases.items())
            np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-5)
            run[:] = [mask, la, sa, lb, sb]


def test_chunked_batch_prefill_equals_one_shot(artifacts):
    """Several new tokens after a past for a batch (which onnxruntime's node refuses in one call) run a
    sequence at a time and equal one-shot prefill, and generation with pieces equals it without."""
    _, _, artifact = artifacts("hybrid_moe_groups", kv_in_place=True)
    backend = Session(artifact).backend
    ids, mask = left_pad([random_prompt(26, 5), random_prompt(17, 6)], 0)
    one_logits, one_state = prefill(backend, ids, mask)
    for chunk in (5, 7):
        logits, state = prefill(backend, ids, mask, chunk)
        np.testing.assert_allclose(logits, one_logits, rtol=1e-4, atol=1e-5)
        for name, value in one_state.items():
            np.testing.assert_allclose(state[name], value, rtol=1e-4, atol=1e-5, err_msg=f"{chunk} {name}")
    session = Session(artifact)
    prompts = [random_prompt(26, 5), random_prompt(17, 6)]
    assert session.generate(prompts, 16, prefill_chunk_size=4).new_token_ids == session.generate(prompts, 16).new_token_ids


def test_a_buffer_is_appended_to_only_through_its_newest_view():
    kv = KVBuffers()
    past = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    buf = kv.buffer(past, 6)
    assert buf.shape[2] >= 6 + 256 and buf.shape[2] % 256 == 0
    np.testing.assert_array_equal(buf[:, :, :5], past)
    view = kv.view(buf, 6)
    other = kv.view(kv.buffer(past[:1], 6), 6)  # another sequence's buffer, stepped in between
    assert kv.buffer(view, 7) is buf  # the newest view, room left: appended in place
    assert kv.buffer(other, 7) is other.base
    assert kv.buffer(view[:, :, :5], 7) is not buf  # an older one: copied
    assert kv.buffer(view[1:], 7) is not buf  # a row of it: copied
    assert kv.buffer(view.copy(), 7) is not buf  # not a view of it
    bigger = kv.buffer(view, buf.shape[2] + 1)  # no room: a longer copy
    assert bigger.shape[2] > buf.shape[2]
    np.testing.assert_array_equal(bigger[:, :, :6], view)
    del view, buf, other
    assert not kv._filled  # a buffer nobody views is forgotten


def test_export_refuses_kv_in_place_where_the_node_cannot_run(tmp_path, hf_checkpoints):
    """Other targets and dtypes (two graphs, no such node), and a head_dim the node's CPU kernel refuses."""
    _, ckpt = hf_checkpoints("hybrid_moe_groups")
    for target, dtype in (("tensorrt", "float32"), ("onnxruntime", "float16")):
        with pytest.raises(NemotronDeployError, match="--kv-in-place with --target"):
            export_artifact(ckpt, tmp_path / f"{target}-{dtype}", target=target, dtype=dtype, progress=False, kv_in_place=True)
        assert not (tmp_path / f"{target}-{dtype}").exists()
    _, odd = hf_checkpoints("latent_moe_tied_odd")  # head_dim 10
    with pytest.raises(NemotronDeployError, match="head_dim is 10"):
        export_artifact(odd, tmp_path / "odd", progress=False, kv_in_place=True)
    assert not (tmp_path / "odd").exists()
