"""What the export target changes in the traced step model, and the TensorRT plugin nodes.

Inside `export_target("tensorrt")`, the two call sites in the model (Mamba2 mixer core, MoE dispatch) write
one custom ONNX node each instead of tracing their torch reference. The node's op_type is the plugin
name; `plugin_version` / `plugin_namespace` are the attributes TensorRT's ONNX parser uses to find the
plugin; the hyper-parameters are node attributes (INT / FLOAT, as the creators list them).
Everywhere else (eager runs, other targets) the references run.
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
    return torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{name}", list(inputs), attrs,
        dtypes=[dtype for dtype, _ in outputs], shapes=[list(shape) for _, shape in outputs], version=1,
    )  # fmt: skip
