"""MoeDispatch plugin against its torch reference (`moe_dispatch`), driven as TensorRT drives it.

Runs on the CPU emulation of the kernels everywhere and on the GPU library where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch
from reference_check import assert_matches_reference

from nemotron_deploy.exporter.plugin_ops import MOE_DISPATCH
from nemotron_deploy.plugins.harness import HarnessError, PluginHarness

# N tokens, X experts, I expert width, D input width, k top_k, G n_group, TG topk_group, skew: bias towards few experts
CASES = {
    "decode_one_token": dict(N=1, X=12, I=20, D=48, k=3, G=4, TG=2, norm=1),
    "decode_batch": dict(N=5, X=12, I=20, D=48, k=3, G=4, TG=2, norm=1),
    "latent_odd_sizes_no_norm": dict(N=9, X=6, I=14, D=22, k=2, G=1, TG=1, norm=0),
    "prefill_groups": dict(N=40, X=16, I=70, D=33, k=4, G=2, TG=1, norm=1),
    # most tokens on two experts: several row tiles per expert, most experts idle
    "prefill_skewed_routing": dict(N=90, X=16, I=40, D=24, k=2, G=1, TG=1, norm=1, skew=True),
}
# Nemotron-3-Nano-30B-A3B MoE: 128 experts, top-6, width 1856, hidden 2688, one group (GPU only)
GPU_CASES = {
    "nano30b_decode_batch8": dict(N=8, X=128, I=1856, D=2688, k=6, G=1, TG=1, norm=1),
    "nano30b_prefill_2048": dict(N=2048, X=128, I=1856, D=2688, k=6, G=1, TG=1, norm=1),
}
# fp32 close to 1e-5 (issue). fp16/bf16: routing is fp32 on both sides; the experts' products are rounded to
# the activation type where the reference rounds (F.linear outputs, relu^2), accumulated in fp32 in the kernel.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def attributes(case: dict) -> dict:
    return dict(top_k=case["k"], n_group=case["G"], topk_group=case["TG"], norm_topk_prob=case["norm"], routed_scaling_factor=2.5)


def make_inputs(case: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, x, i, d = case["N"], case["X"], case["I"], case["D"]
    bias = torch.randn(x, generator=g) * 0.05
    if case.get("skew"):
        bias[3] += 5.0
        bias[11] += 5.0
    tensors = [
        torch.randn(n, d, generator=g),
        torch.randn(n, x, generator=g),
        bias,
        torch.randn(x, i, d, generator=g) / d**0.5,
        torch.randn(x, d, i, generator=g) / i**0.5,
    ]
    fixed = {1, 2}  # router logits and correction bias are float32
    return [t.to(device=device, dtype=torch.float32 if j in fixed else dtype) for j, t in enumerate(tensors)]


def check_case(backend, case: dict, dtype: torch.dtype) -> None:
    harness, device = backend
    assert_matches_reference(harness, MOE_DISPATCH, make_inputs(case, dtype, device), attributes(case), TOLERANCE[dtype])


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_fp32(backend, name):
    check_case(backend, CASES[name], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["decode_batch", "prefill_groups"])
def test_matches_reference_half_types(backend, name, dtype):
    check_case(backend, CASES[name], dtype)


@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_matches_reference_nano30b_sizes_on_gpu(backend, name):
    if backend[1].type != "cuda":
        pytest.skip("full Nano-30B MoE sizes run on the GPU only (the small cases cover the emulation)")
    for dtype in (torch.float32, torch.bfloat16):
        check_case(backend, GPU_CASES[name], dtype)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(top_k=None), "attribute 'top_k' is missing"),
        (dict(top_k=17), "attribute 'top_k' is 17, expected 1..16"),
        (dict(topk_group=5), "attribute 'topk_group' must not exceed 'n_group'"),
        (dict(norm_topk_prob=2), "attribute 'norm_topk_prob' is 2, expected 0..1"),
    ],
)
def test_bad_attributes_fail_create_plugin_through_the_logger(emulated_build, change, message):
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    attrs = {k: v for k, v in {**attributes(CASES["decode_batch"]), **change}.items() if v is not None}
    with pytest.raises(HarnessError, match="MoeDispatch: " + message):
        harness.create(MOE_DISPATCH, attrs)


def test_unsupported_types_are_refused_and_inconsistent_shapes_fail_configure(emulated_build):
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    case = CASES["prefill_groups"]
    plugin = harness.create(MOE_DISPATCH, attributes(case))
    f32, bf16, i32 = torch.float32, torch.bfloat16, torch.int32
    ok = [bf16, f32, f32, bf16, bf16, f32]
    assert all(plugin.supports(pos, ok) for pos in range(len(ok)))
    assert not plugin.supports(1, [bf16, bf16] + ok[2:])  # router logits must be float32
    assert not plugin.supports(3, ok[:3] + [f32] + ok[4:])  # expert weights in the activation type
    assert not plugin.supports(0, [i32] + ok[1:])
    inputs = make_inputs(case, torch.float32, torch.device("cpu"))
    inputs[4] = inputs[4][:, :, :-1]  # experts_down's width no longer I
    with pytest.raises(HarnessError, match=r"input 'experts_down' dim 2 is 69, expected 70"):
        plugin.build(inputs)
    bad_groups = harness.create(MOE_DISPATCH, dict(attributes(case), n_group=3, topk_group=1))
    with pytest.raises(HarnessError, match="experts .* must be a multiple of n_group"):
        bad_groups.build(make_inputs(case, torch.float32, torch.device("cpu")))
