"""What the export target changes in the traced step model: TensorRT plugin nodes, onnxruntime's fused
nodes, and how a weight is stored. The model chooses by its graph's `Lowering` (modeling/lowering.py).

For the tensorrt target, the two call sites in the model (Mamba2 mixer core, MoE dispatch) write one
custom ONNX node each instead of tracing their torch reference. The node's op_type is the plugin
name; `plugin_version` / `plugin_namespace` are the attributes TensorRT's ONNX parser uses to find the
plugin; the hyper-parameters are node attributes (INT / FLOAT, as the creators list them).
For the onnxruntime target, each MoE layer's routed experts become one `com.microsoft.MoE`
node, each RMS norm one `RMSNormalization`, each Mamba conv one `com.microsoft.CausalConvWithState`
(docs/export.md): fewer, fused nodes, which is what a CPU decode step spends its time on besides
reading weights. Eager runs compute the references.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nemotron_deploy.plugins.contract import CONTRACTS

MAMBA2_CORE = "Mamba2Core"  # the contracts' names (plugins/*/contract.json), keys of CONTRACTS
MOE_DISPATCH = "MoeDispatch"


def plugin_node(name: str, inputs: Sequence[torch.Tensor], attributes: dict, output_shapes: Sequence[Sequence]) -> list[torch.Tensor]:
    """One node of plugin `name`, typed by its contract: each input cast to its port's dtype, each output
    given its port's dtype ("T" = the activation dtype: that of the first "T" input); `output_shapes`
    gives each output's shape for the tracer. A cast to the dtype a tensor has exports as nothing."""
    op = CONTRACTS[name]
    activation = next(x.dtype for x, port in zip(inputs, op.inputs) if port.dtype == "T")
    dtype = lambda port: activation if port.dtype == "T" else getattr(torch, port.dtype)  # noqa: E731
    inputs = [x.to(dtype(port)) for x, port in zip(inputs, op.inputs, strict=True)]
    attrs = dict(attributes, plugin_version=op.version, plugin_namespace=op.namespace)
    results = torch.onnx.ops.symbolic_multi_out(
        f"{op.namespace}::{name}",
        inputs,
        attrs,
        dtypes=[dtype(port) for port in op.outputs],
        shapes=[list(shape) for shape in output_shapes],
        version=1,
    )
    return [r.to(inputs[0].device) for r in results]  # see _on_device


# _on_device: torch.onnx.ops.symbolic makes its (fake) outputs on the default device, the CPU, whatever
# its inputs' device; the exporter traces on `meta` (no weights in memory), so the outputs are moved to
# the inputs' device. A device move exports as nothing.


LAYOUT_DOMAIN = "nemotron_deploy.layout"  # marker nodes folded into the stored weights before saving


def stored_repeat_rows(weight: torch.Tensor, repeats: int) -> torch.Tensor:
    """`weight.repeat_interleave(repeats, dim=1)`, stored that way in the artifact rather than computed.

    Under export this is a marker node on the initializer that the exporter folds into the weight's
    layout while streaming it from the checkpoint (it never runs); eagerly it computes the result.
    """
    if not torch.onnx.is_in_onnx_export():
        return weight.repeat_interleave(repeats, dim=1)
    shape = [weight.shape[0], weight.shape[1] * repeats, *weight.shape[2:]]
    out = torch.onnx.ops.symbolic(
        f"{LAYOUT_DOMAIN}::RepeatRows", [weight], {"repeats": repeats}, dtype=weight.dtype, shape=shape, version=1
    )
    return out.to(weight.device)  # see _on_device


# com.microsoft.MoE attributes that make its interleaved SwiGLU compute relu2 (see onnxruntime_moe)
ONNXRUNTIME_MOE_RELU2 = dict(
    activation_type="swiglu", swiglu_fusion=1, activation_alpha=1e4, activation_beta=0.0, normalize_routing_weights=0
)


def onnxruntime_moe(hidden: torch.Tensor, router_probs: torch.Tensor, fc1: torch.Tensor, fc2: torch.Tensor, top_k: int) -> torch.Tensor:
    """onnxruntime's `com.microsoft.MoE` (CPU kernels since 1.23) with NemotronH's relu2 experts.

    hidden: (N, Din); router_probs: (N, X) in hidden's dtype, log of the routing weight at the chosen
    experts and -inf elsewhere (the op's softmax over them gives w / sum(w)); fc1: (X, 2I, Din), each
    `up` row twice (interleaved gate/linear); fc2: (X, Din, I). Returns (N, Din) = sum_k w/sum(w) * expert.
    relu2 has no CPU kernel: interleaved SwiGLU with gate == linear == u and alpha = 1e4 computes
    u * sigmoid(1e4 u) * u, which is relu(u)^2 to float32 rounding (sigmoid saturates to 0 or 1 except
    for |u| < ~1e-3, where u^2 is below rounding). No swiglu_limit: it would clamp.
    """
    attrs = dict(ONNXRUNTIME_MOE_RELU2, k=top_k)
    out = torch.onnx.ops.symbolic(
        "com.microsoft::MoE", [hidden, router_probs, fc1, None, fc2], attrs, dtype=hidden.dtype, shape=hidden.shape, version=1
    )
    return out.to(hidden.device)  # see _on_device


def onnxruntime_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """ONNX `RMSNormalization` (opset 23; one onnxruntime kernel) over the last dim: weight * x / rms(x).

    x: (..., E) float32; weight: (E,) float32. Returns (..., E) float32. One node for the seven that
    `x * rsqrt(mean(x^2) + eps) * weight` traces to (onnxruntime's own fusion misses the rsqrt form).
    """
    attrs = dict(axis=-1, epsilon=float(eps), stash_type=1)
    out = torch.onnx.ops.symbolic("::RMSNormalization", [x, weight], attrs, dtype=x.dtype, shape=x.shape, version=23)
    return out.to(x.device)  # see _on_device


def onnxruntime_causal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's `com.microsoft.CausalConvWithState` without its activation: the conv of
    `causal_conv_step` in one node; the caller applies SiLU.

    x: (B, C, T) float32; weight: (C, K) float32; bias: (C,) float32 or None; state: (B, C, K-1) float32.
    Returns (conv (B, C, T), new state (B, C, K-1)), both float32.

    Why not the node's own `activation="silu"`: onnxruntime 1.32 computes it element by element, on one
    thread; as separate ops it fuses to one vectorized QuickGelu. At 4096 channels and 2 threads that made
    the node 2.4x faster at 512 tokens (6.0 -> 2.5 ms) and no slower at one token (0.043 -> 0.040 ms)
    (benchmarks/probe_onnxruntime_cpu.py).
    """
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    inputs = [x, weight.unsqueeze(1), bias, state]
    out, new_state = torch.onnx.ops.symbolic_multi_out(
        "com.microsoft::CausalConvWithState",
        inputs,
        {"activation": "none"},
        dtypes=[x.dtype, state.dtype],
        shapes=[list(x.shape), list(state.shape)],
        version=1,
    )
    return out.to(x.device), new_state.to(x.device)  # see _on_device


def onnxruntime_linear_attention(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba-2 selective scan as onnxruntime's `com.microsoft.LinearAttention` (update_rule gated),
    one node for any T: S_t = exp(dt_t A) S_{t-1} + B_t (x) (dt_t x_t); y_t = C_t . S_t.

    x: (B, T, H, P); dt: (B, T, H) (discretised, masked); A: (H,); Bm, Cm: (B, T, G, N); state:
    (B, H, P, N); all float32. Returns y (B, T, H, P) and the new state (B, H, P, N), as `ssd_chunked`.
    The node's query is C and its key B, each with one head per group: head h reads group h // (H/G)
    of both, Mamba's grouping (its inverse GQA for the query, its shared key heads for the key: no copy
    of B per head, which at a 4000-token prefill of the benchmark model was 64 MiB per layer). Its state
    is (B, H, N, P): the transpose of the step contract's, hence the two Transposes.
    """
    b, t, h, p = x.shape
    g, n = Bm.shape[2], Bm.shape[3]
    query = Cm.flatten(2)  # (B, T, G*N)
    key = Bm.flatten(2)  # (B, T, G*N)
    value = (x * dt[..., None]).flatten(2)  # (B, T, H*P)
    decay = dt * A  # (B, T, H): log of the per-head decay
    attrs = dict(update_rule="gated", q_num_heads=g, kv_num_heads=h, scale=1.0)
    y, new_state = torch.onnx.ops.symbolic_multi_out(
        "com.microsoft::LinearAttention",
        [query, key, value, state.transpose(-1, -2), decay],
        attrs,
        dtypes=[x.dtype, state.dtype],
        shapes=[[b, t, h * p], [b, h, n, p]],
        version=1,
    )
    return y.to(x.device).unflatten(-1, (h, p)), new_state.to(x.device).transpose(-1, -2)


def onnxruntime_group_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor,
    seqlens: torch.Tensor,
    total: torch.Tensor,
    heads: int,
    kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """onnxruntime's `com.microsoft.GroupQueryAttention` without rotary: `Attention.forward`'s grouped,
    causal attention in one node that appends the new keys and values to the K/V cache.

    q: (B, T, Hq*D); k, v: (B, T, Hkv*D); past_key, past_value: (B, Hkv, P, D), the K/V cache, whose first
    S - T positions are the past (P = S - T, or a longer buffer); bias: (B, 1, T, S), `attention_bias`
    without its R axis; seqlens: (B,) int32, S - 1 for every row; total: () int32, S. All float32 but
    the counts. Returns the output (B, T, Hq*D) and the present K/V (B, Hkv, max(S, P), D): the past
    with the new keys at positions S - T .. S - 1. Where the caller binds one buffer as both past and
    present (IO binding), the node writes the new keys into it in place: no copy of the cache per step
    (docs/export.md). The row of every sequence shares the positions of the batch's mask (left padding
    is masked by `bias`), so seqlens is the same S - 1 for all rows.

    onnxruntime 1.32 refuses several new tokens per sequence after a past when the batch is larger than
    one; the runtime runs such a step one sequence at a time (runtime/backends/onnxruntime_backend.py).
    """
    b, t, _ = q.shape
    d = past_key.shape[-1]
    present = [b, kv_heads, past_key.shape[2] + t, d]  # the step contract's total_len (a buffer's present is P long)
    inputs = [q, k, v, past_key, past_value, seqlens, total, None, None, None, bias]
    out, key, value = torch.onnx.ops.symbolic_multi_out(
        "com.microsoft::GroupQueryAttention",
        inputs,
        dict(num_heads=heads, kv_num_heads=kv_heads),
        dtypes=[q.dtype, past_key.dtype, past_value.dtype],
        shapes=[[b, t, heads * d], present, present],
        version=1,
    )
    return out.to(q.device), key.to(q.device), value.to(q.device)  # see _on_device
