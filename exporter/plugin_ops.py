"""The contract of the TensorRT plugin ops: names, inputs, outputs, attributes, and their torch references.

One table shared by the exporter (plugin nodes), the reference execution of plugin graphs, the
plugin tests and the docs (docs/plugins.md). The CUDA plugins in plugins/ implement exactly these
signatures; a test compares the library's creators (names, versions, field names) with this table.

Dtype letters: "T" is the activation dtype (float32, float16 or bfloat16; one per node),
"float32" is fixed. Shapes use B batch, T new tokens, N = B*T tokens, C conv channels, K conv kernel,
H heads, P head dim, G groups, S state size, X experts, I expert width, D expert input width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nemotron_deploy.exporter import plugin_nodes
from nemotron_deploy.exporter.modeling.mamba import mamba2_core, mamba2_core_attributes  # noqa: F401 (re-exported)
from nemotron_deploy.exporter.modeling.mlp import moe_dispatch, moe_dispatch_attributes  # noqa: F401

PLUGIN_NAMESPACE = plugin_nodes.PLUGIN_NAMESPACE


def mamba2_core_as_the_kernels(*inputs, **attributes):
    """`mamba2_core` as the Mamba2Core plugin computes it. The node has no graph kind (its attributes
    carry the graph's dt clamp), so its kernels choose by length: the recurrent update for one token
    (decodeKernel), the chunked scan otherwise; the two agree to fp32 rounding."""
    return mamba2_core(*inputs, **attributes, recurrent=inputs[0].shape[1] == 1)


@dataclass(frozen=True)
class Port:
    name: str
    dtype: str  # "T" or a fixed dtype name
    shape: str


@dataclass(frozen=True)
class Attribute:
    name: str
    kind: str  # "int" (ONNX INT -> PluginField kINT32) | "float" (FLOAT -> kFLOAT32)
    meaning: str


@dataclass(frozen=True)
class PluginOp:
    name: str  # ONNX op_type == TensorRT plugin name
    version: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    attributes: tuple[Attribute, ...]
    reference: Callable
    namespace: str = PLUGIN_NAMESPACE


MAMBA2_CORE = PluginOp(
    name=plugin_nodes.MAMBA2_CORE,
    version=plugin_nodes.PLUGIN_VERSION,
    inputs=(
        Port("xbc", "T", "[B, T, C]"),  # C = H*P + 2*G*S, the conv input from in_proj
        Port("dt", "T", "[B, T, H]"),  # raw dt from in_proj
        Port("mask", "float32", "[B, T]"),  # 1 real token, 0 left padding
        Port("conv_state", "T", "[B, C, K-1]"),
        Port("ssm_state", "float32", "[B, H, P, S]"),
        Port("conv_weight", "T", "[C, K]"),
        Port("conv_bias", "T", "[C]"),
        Port("dt_bias", "T", "[H]"),
        Port("A_log", "T", "[H]"),
        Port("D", "T", "[H]"),
    ),
    outputs=(
        Port("y", "float32", "[B, T, H*P]"),  # scan output + D skip, before the gated norm
        Port("new_conv_state", "T", "[B, C, K-1]"),
        Port("new_ssm_state", "float32", "[B, H, P, S]"),
    ),
    attributes=(
        Attribute("n_groups", "int", "G: B/C groups, H % G == 0"),
        Attribute("head_dim", "int", "P"),
        Attribute("state_size", "int", "S"),
        Attribute("chunk_size", "int", "chunk length of the chunked scan (T > 1)"),
        Attribute("dt_min", "float", "lower clamp of softplus(dt + dt_bias)"),
        Attribute("dt_max", "float", "upper clamp (may be +inf)"),
    ),
    reference=mamba2_core_as_the_kernels,
)

MOE_DISPATCH = PluginOp(
    name=plugin_nodes.MOE_DISPATCH,
    version=plugin_nodes.PLUGIN_VERSION,
    inputs=(
        Port("h", "T", "[N, D]"),
        Port("router_logits", "float32", "[N, X]"),
        Port("correction_bias", "float32", "[X]"),
        Port("experts_up", "T", "[X, I, D]"),
        Port("experts_down", "T", "[X, D, I]"),
    ),
    outputs=(Port("routed", "float32", "[N, D]"),),
    attributes=(
        Attribute("top_k", "int", "experts per token"),
        Attribute("n_group", "int", "router groups, X % n_group == 0"),
        Attribute("topk_group", "int", "groups that compete per token"),
        Attribute("norm_topk_prob", "int", "1: renormalise the k weights to sum 1"),
        Attribute("routed_scaling_factor", "float", "scale of the routed weights"),
    ),
    reference=moe_dispatch,
)

PLUGIN_OPS = {op.name: op for op in (MAMBA2_CORE, MOE_DISPATCH)}


def run_reference(op: PluginOp, inputs: list, attributes: dict) -> tuple:
    """Evaluate `op` on torch tensors exactly as a plugin node would (inputs in port order, node attributes);
    returns the outputs as a tuple, in port order."""
    outputs = op.reference(*inputs, **attributes)
    return outputs if isinstance(outputs, tuple) else (outputs,)
