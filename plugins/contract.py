"""The contract of the TensorRT plugin ops, read from plugins/<plugin>/contract.json.

Each contract file (name, version, namespace, inputs and outputs in port order with dtype and shape,
attributes with kinds and ranges) is the one source of both languages: the C++ plugins are compiled
from a header generated from it (contract_header.py); the exporter's plugin nodes are typed by it
(exporter/plugin_nodes.py) and its torch references are bound to it (exporter/plugin_ops.py).

Dtype letters: "T" is the activation dtype (float32, float16 or bfloat16; one per node), "float32"
is fixed. The shape letters are the legend of plugins/dimensions.json (`DIMENSIONS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from importlib import resources

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
class PluginContract:
    name: str  # ONNX op_type == TensorRT plugin name
    version: str
    namespace: str  # TensorRT plugin namespace == ONNX domain of the node
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    attributes: tuple[Attribute, ...]
    dimension_limits: tuple[DimensionLimit, ...]  # sizes the kernels are written for

    def as_fields(self) -> dict:
        """The contract's fields by name (to build a subclass's instance from it)."""
        return {f.name: getattr(self, f.name) for f in fields(PluginContract)}


def read_contract(folder: str) -> PluginContract:
    """The contract of the plugin in plugins/<folder>/contract.json."""
    contract = load(_PLUGINS / folder / "contract.json")
    ports = lambda key: tuple(Port(**p) for p in contract[key])  # noqa: E731
    return PluginContract(
        name=contract["name"],
        version=contract["version"],
        namespace=contract["namespace"],
        inputs=ports("inputs"),
        outputs=ports("outputs"),
        attributes=tuple(Attribute(**a) for a in contract["attributes"]),
        dimension_limits=tuple(DimensionLimit(**lim) for lim in contract.get("dimension_limits", ())),
    )


MAMBA2_CORE = read_contract("mamba2_core")
MOE_DISPATCH = read_contract("moe_dispatch")
CONTRACTS = {c.name: c for c in (MAMBA2_CORE, MOE_DISPATCH)}
