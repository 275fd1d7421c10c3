"""What the export target changes in the traced step model: TensorRT plugin nodes, onnxruntime's fused
MoE node, and how a weight is stored.

Inside `export_target("tensorrt")`, the two call sites in the model (Mamba2 mixer core, MoE dispatch) write
one custom ONNX node each instead of tracing their torch reference. The node's op_type is the plugin
name; `plugin_version` / `plugin_namespace` are the attributes TensorRT's ONNX parser uses to find the
plugin; the hyper-parameters are node attributes (INT / FLOAT, as the creators list them).
Inside `export_target("onnxruntime")`, each MoE layer's routed experts become one `com.microsoft.MoE`
node (docs/export.md). Everywhere else (eager runs) the references run.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch

MAMBA2_CORE = "Mamba2Core"
MOE_DISPATCH = "MoeDispatch"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "nemotron_deploy"
DOMAIN = PLUGIN_NAMESPACE  # ONNX domain of the plugin nodes

_target = contextvars.ContextVar("export_target", default="onnxruntime")


@contextlib.contextmanager
def export_target(target: str) -> Iterator[None]:
    """Trace the model for `target` (onnxruntime | tensorrt | tensorrt-rtx)."""
    token = _target.set(target)
    try:
        yield
    finally:
        _target.reset(token)


def emitting() -> bool:
    """True while tracing a `tensorrt`-target graph: plugin nodes instead of their references."""
    return _target.get() == "tensorrt" and torch.onnx.is_in_onnx_export()


def fused_moe() -> bool:
    """True while tracing an `onnxruntime` graph: routed experts as one com.microsoft.MoE node per layer."""
    return _target.get() == "onnxruntime" and torch.onnx.is_in_onnx_export()


def dense_moe_prefill() -> bool:
    """True while tracing a `tensorrt-rtx` graph: TensorRT for RTX runs NonZero only as a plugin, which it
    cannot load, so prefill computes every expert on every token (X/k times the FLOPs of the per-expert
    loop, no data-dependent shapes) and weights all but the top-k by zero."""
    return _target.get() == "tensorrt-rtx" and torch.onnx.is_in_onnx_export()


def plugin_node(
    name: str,
    inputs: Sequence[torch.Tensor],
    attributes: dict,
    outputs: Sequence[tuple[torch.dtype, Sequence]],
) -> Sequence[torch.Tensor]:
    """One plugin node; `outputs` gives each output's (dtype, shape) for the tracer."""
    attrs = dict(attributes, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
    results = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{name}", list(inputs), attrs,
        dtypes=[dtype for dtype, _ in outputs], shapes=[list(shape) for _, shape in outputs], version=1,
    )  # fmt: skip
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
    out = torch.onnx.ops.symbolic(f"{LAYOUT_DOMAIN}::RepeatRows", [weight], {"repeats": repeats}, dtype=weight.dtype, shape=shape, version=1)
    return out.to(weight.device)  # see _on_device


# com.microsoft.MoE attributes that make its interleaved SwiGLU compute relu2 (see onnxruntime_moe)
ONNXRUNTIME_MOE_RELU2 = dict(activation_type="swiglu", swiglu_fusion=1, activation_alpha=1e4, activation_beta=0.0, normalize_routing_weights=0)


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
