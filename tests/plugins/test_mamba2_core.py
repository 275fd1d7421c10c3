"""Mamba2Core plugin against its torch reference (`mamba2_core`), driven as TensorRT drives it.

Runs on the CPU emulation of the kernels everywhere and on the GPU library where a GPU exists.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_check import assert_matches_reference

from nemotron_deploy.exporter.plugin_ops import MAMBA2_CORE
from nemotron_deploy.plugins.harness import HarnessError, PluginHarness, attribute_spec

# B batch, T new tokens, H heads, P head dim, G groups, S state, K conv kernel, L chunk; pads[b] = left pads of row b
CASES = {
    "decode": dict(B=3, T=1, H=4, P=6, G=2, S=5, K=4, L=4, pads=[0, 0, 0]),
    "decode_padded_row": dict(B=2, T=1, H=4, P=6, G=2, S=5, K=4, L=4, pads=[0, 1]),
    "prefill_one_chunk": dict(B=1, T=4, H=4, P=6, G=2, S=5, K=4, L=4, pads=[0]),
    "prefill_multiple_of_chunk": dict(B=2, T=12, H=4, P=6, G=2, S=5, K=4, L=4, pads=[0, 0]),
    "prefill_ragged_padded": dict(B=3, T=11, H=4, P=6, G=2, S=5, K=4, L=4, pads=[0, 3, 7]),
    "conv3_odd_sizes": dict(B=2, T=13, H=6, P=6, G=3, S=5, K=3, L=5, pads=[2, 0]),
    "shorter_than_conv_window": dict(B=2, T=2, H=4, P=6, G=1, S=40, K=4, L=8, pads=[0, 1]),
    # Nemotron-3-Nano-30B-A3B's per-head sizes (P 64, S 128, chunk 128) with few heads, two chunks
    "nano30b_head_sizes": dict(B=2, T=150, H=2, P=64, G=1, S=128, K=4, L=128, pads=[0, 37]),
}
# Nemotron-3-Nano-30B-A3B mixer: 64 heads x 64, 8 groups, state 128, conv 4, chunk 128 (GPU only: too big to emulate)
GPU_CASES = {
    "nano30b_decode_batch8": dict(B=8, T=1, H=64, P=64, G=8, S=128, K=4, L=128, pads=[0, 0, 1, 0, 0, 0, 1, 0]),
    "nano30b_prefill_1000": dict(B=2, T=1000, H=64, P=64, G=8, S=128, K=4, L=128, pads=[0, 333]),
    "nano30b_prefill_2048": dict(B=1, T=2048, H=64, P=64, G=8, S=128, K=4, L=128, pads=[0]),
}
# fp32 close to 1e-5 relative (issue); fp16/bf16: the kernels round where the reference rounds (conv output,
# state dtype) and accumulate in fp32, so one-ulp differences of those roundings are what remains.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def attributes(case: dict) -> dict:
    return dict(
        n_groups=case["G"],
        head_dim=case["P"],
        state_size=case["S"],
        chunk_size=case["L"],
        dt_min=0.001 if case["T"] > 1 else 0.0,
        dt_max=math.inf,
    )


def make_inputs(case: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Inputs in port order, at the scales of a trained model (small dt, decaying A), from a random state."""
    g = torch.Generator().manual_seed(seed)
    b, t, h, p, n_groups, s, k = (case[x] for x in "BTHPGSK")
    c = h * p + 2 * n_groups * s
    mask = torch.ones(b, t)
    for row, pads in enumerate(case["pads"]):
        mask[row, :pads] = 0
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    tensors = [
        rand(b, t, c),
        rand(b, t, h),
        mask,
        rand(b, c, k - 1),
        rand(b, h, p, s),
        rand(c, k) * 0.5,
        rand(c) * 0.1,
        rand(h) - 3.0,
        torch.log(torch.rand(h, generator=g) * 15 + 1),
        rand(h),
    ]
    fixed = {2, 4}  # mask and ssm_state are float32 in every engine
    return [x.to(device=device, dtype=torch.float32 if i in fixed else dtype) for i, x in enumerate(tensors)]


def check_case(backend, case: dict, dtype: torch.dtype) -> None:
    harness, device = backend
    assert_matches_reference(harness, MAMBA2_CORE, make_inputs(case, dtype, device), attributes(case), TOLERANCE[dtype])


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_fp32(backend, name):
    check_case(backend, CASES[name], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["decode_padded_row", "prefill_ragged_padded"])
def test_matches_reference_half_types(backend, name, dtype):
    check_case(backend, CASES[name], dtype)


@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_matches_reference_nano30b_sizes_on_gpu(backend, name):
    if backend[1].type != "cuda":
        pytest.skip("full Nano-30B mixer sizes run on the GPU only (the small cases cover the emulation)")
    for dtype in (torch.float32, torch.bfloat16):
        check_case(backend, GPU_CASES[name], dtype)


def test_padded_positions_leave_states_unchanged(emulated_build):
    """A row that is all padding leaves its SSM state untouched and outputs zeros (decode and prefill).
    (Its conv window shifts in zeros: padding enters the conv as zeros, as in the reference.)"""
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    for t in (1, 9):
        case = dict(CASES["prefill_ragged_padded"], T=t, pads=[0, t, 0])
        inputs = make_inputs(case, torch.float32, torch.device("cpu"))
        y, conv, ssm = harness.create(MAMBA2_CORE, attributes(case)).run(inputs)
        assert torch.equal(ssm[1], inputs[4][1])
        assert torch.equal(conv[1][:, -t:], torch.zeros_like(conv[1][:, -t:]))
        assert torch.equal(y[1], torch.zeros_like(y[1]))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(head_dim=None), "attribute 'head_dim' is missing"),
        (dict(chunk_size=0), "attribute 'chunk_size' is 0, expected 1..256"),
        (dict(head_dim=256), "attribute 'head_dim' is 256, expected 1..128"),
        (dict(dt_min=2.0, dt_max=1.0), "attribute 'dt_min' must not exceed 'dt_max'"),
        (dict(dt_min=-1.0), "attribute 'dt_min' is -1, expected 0 <= value <= inf"),
        (dict(n_groups=1.5), "attribute 'n_groups' must be one INT (int32) value"),
    ],
)
def test_bad_attributes_fail_create_plugin_through_the_logger(emulated_build, change, message):
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    attrs = {**attributes(CASES["decode"]), **change}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    spec = attribute_spec(MAMBA2_CORE, attrs).replace("n_groups=i:1", "n_groups=f:1.5")  # FLOAT where INT is due
    with pytest.raises(HarnessError, match="Mamba2Core: " + message.replace("(", r"\(").replace(")", r"\)")):
        harness.create(MAMBA2_CORE, attrs, spec=spec)


def test_unsupported_types_are_refused_and_inconsistent_shapes_fail_configure(emulated_build):
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    case = CASES["prefill_ragged_padded"]
    plugin = harness.create(MAMBA2_CORE, attributes(case))
    f32, f16, bf16, i32 = torch.float32, torch.float16, torch.bfloat16, torch.int32
    ok = [f16, f16, f32, f16, f32, f16, f16, f16, f16, f16, f32, f16, f32]
    assert all(plugin.supports(pos, ok) for pos in range(len(ok)))
    assert not plugin.supports(0, [i32] + ok[1:])  # integer activations
    assert not plugin.supports(1, [f16, bf16] + ok[2:])  # mixed activation types
    assert not plugin.supports(4, ok[:4] + [f16] + ok[5:])  # the SSM state is float32
    assert not plugin.supports(2, ok[:2] + [f16] + ok[3:])  # the mask is float32
    inputs = make_inputs(case, torch.float32, torch.device("cpu"))
    inputs[0] = inputs[0][..., :-1]  # C no longer H*P + 2*G*S
    with pytest.raises(HarnessError, match=r"input 'xbc' dim 2 is 43, expected 44 \(H\*P \+ 2\*G\*S\)"):
        plugin.build(inputs)
