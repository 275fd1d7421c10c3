"""The contract of the TensorRT plugin ops, read from plugins/<plugin>/contract.json, and their torch references.

Each contract file (name, version, namespace, inputs and outputs in port order with dtype and shape,
attributes with kinds and ranges) is the one source of both languages: the C++ plugins are compiled
from a header generated from it (plugins/contract_header.py), and this module gives it to the
exporter's plugin nodes (`plugin_nodes.plugin_node`), the reference execution of plugin graphs, the
plugin tests and docs/plugins.md.

Dtype letters: "T" is the activation dtype (float32, float16 or bfloat16; one per node), "float32"
is fixed. The shape letters are the legend of plugins/dimensions.json (`DIMENSIONS`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from nemotron_deploy.exporter.modeling.mamba import mamba2_core, mamba2_core_attributes  # noqa: F401 (re-exported)
from nemotron_deploy.exporter.modeling.mlp import moe_dispatch, moe_dispatch_attributes  # noqa: F401
from nemotron_deploy.plugins.contract_header import load

_PLUGINS = resources.files("nemotron_deploy.plugins")
DIMENSIONS: dict[str, str] = json.loads((_PLUGINS / "dimensions.json").read_text())


@dataclass(frozen=True)
class Port:
    name: str
    dtype: str  # "T" or "float32"
    shape: str  # e.g. "[B, T, C]"
    rank: int
    meaning: str


@dataclass(frozen=True)
class Attribute:
    name: str
    kind: str  # "int" (ONNX INT -> PluginField kINT32) | "float" (FLOAT -> kFLOAT32)
    meaning: str
    min: float | None = None  # inclusive bounds the creator enforces (None: unbounded)
    max: float | None = None
    at_most: str | None = None  # another attribute this one must not exceed


@dataclass(frozen=True)
class DimensionLimit:
    dim: str  # a letter of DIMENSIONS
    min: int
    max: int
    meaning: str


@dataclass(frozen=True)
class PluginOp:
    name: str  # ONNX op_type == TensorRT plugin name
    version: str
    namespace: str  # TensorRT plugin namespace == ONNX domain of the node
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    attributes: tuple[Attribute, ...]
    dimension_limits: tuple[DimensionLimit, ...]  # sizes the kernels are written for
    reference: Callable


def _op(folder: str, reference: Callable) -> PluginOp:
    contract = load(_PLUGINS / folder / "contract.json")
    ports = lambda key: tuple(Port(**p) for p in contract[key])  # noqa: E731
    return PluginOp(
        name=contract["name"], version=contract["version"], namespace=contract["namespace"],
        inputs=ports("inputs"), outputs=ports("outputs"),
        attributes=tuple(Attribute(**a) for a in contract["attributes"]),
        dimension_limits=tuple(DimensionLimit(**lim) for lim in contract.get("dimension_limits", ())), reference=reference,
    )  # fmt: skip


def mamba2_core_as_the_kernels(*inputs, **attributes):
    """`mamba2_core` as the Mamba2Core plugin computes it. The node has no graph kind (its attributes
    carry the graph's dt clamp), so its kernels choose by length: the recurrent update for one token
    (decodeKernel), the chunked scan otherwise; the two agree to fp32 rounding."""
    return mamba2_core(*inputs, **attributes, recurrent=inputs[0].shape[1] == 1)


MAMBA2_CORE = _op("mamba2_core", mamba2_core_as_the_kernels)
MOE_DISPATCH = _op("moe_dispatch", moe_dispatch)
PLUGIN_OPS = {op.name: op for op in (MAMBA2_CORE, MOE_DISPATCH)}


def run_reference(op: PluginOp, inputs: list, attributes: dict) -> tuple:
    """Evaluate `op` on torch tensors exactly as a plugin node would (inputs in port order, node attributes);
    returns the outputs as a tuple, in port order."""
    outputs = op.reference(*inputs, **attributes)
    return outputs if isinstance(outputs, tuple) else (outputs,)
