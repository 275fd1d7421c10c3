"""When two exported step graphs compute the same thing, node for node, whatever their order and names.

A stitched graph (exporter/stitch.py) and a whole-model trace differ in what does not matter: node
order within the shared prologue, counters in node and value names (`layers.3.mixer/node_linear_12`
against `.../node_linear_40`), and which graph input a shape symbol is read from (torch.export picks a
representative among inputs whose dims it proved equal: `batch` from `attention_mask` or from a state).
`signature` abstracts those away and keeps everything else: every node's op, domain, attributes and
module, and its inputs as the nodes that made them, graph inputs and weights by name, small constants
by value.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import onnx_ir as ir

_SMALL = 4096  # constants up to this many elements are compared by value (their names are counters)


@dataclass(frozen=True)
class Signature:
    inputs: tuple  # (name, dtype, shape) in order
    outputs: tuple  # (name, dtype, shape, digest of the value) in order
    nodes: Counter  # digest -> count

    def differences(self, other: Signature, limit: int = 5) -> list[str]:
        """What differs, in words (empty when equivalent)."""
        out = []
        if self.inputs != other.inputs:
            out.append(f"inputs differ: {self.inputs} vs {other.inputs}")
        if self.outputs != other.outputs:
            out.append("outputs differ: " + "; ".join(f"{a} vs {b}" for a, b in zip(self.outputs, other.outputs) if a != b)[:2000])
        only_a, only_b = self.nodes - other.nodes, other.nodes - self.nodes
        if only_a or only_b:
            out.append(
                f"{sum(only_a.values())} nodes only in the first, {sum(only_b.values())} only in the second: "
                f"{list(only_a)[:limit]} / {list(only_b)[:limit]}"
            )
        return out


def _shape(value: ir.Value) -> tuple:
    return () if value.shape is None else tuple(str(d) for d in value.shape)


def _constant_key(value: ir.Value) -> tuple | None:
    tensor = value.const_value
    if tensor is None or tensor.size > _SMALL:
        return None
    try:
        array = tensor.numpy()
    except Exception:  # a weight placeholder or a meta tensor: no data here, compared by name
        return None
    return ("constant", str(array.dtype), array.shape, array.tobytes())


def _attribute(attr: ir.Attr):
    if attr.type == ir.AttributeType.TENSOR:
        array = attr.value.numpy()
        return (str(array.dtype), array.shape, array.tobytes())
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise ValueError(f"graph_equivalence: attribute {attr.name} holds a subgraph, not compared")
    value = attr.value
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _module(node: ir.Node) -> str:
    """`layers.3.mixer` of `layers.3.mixer/node_linear_12` (graph_passes.name_by_module); "" outside the
    layers, where the module a shape computation is named after is wherever the tracer first needed it."""
    module = (node.name or "").partition("/")[0]
    return module if module.startswith("layers.") else ""


def signature(model: ir.Model, modules: bool = True) -> Signature:
    """modules=False: nodes compared without the module their names give (across revisions that named
    nodes differently)."""
    graph = model.graph
    digest: dict[ir.Value, str] = {}
    for value in graph.inputs:
        digest[value] = repr(("input", value.name))
    for name, value in graph.initializers.items():
        key = _constant_key(value)
        digest[value] = repr(key if key is not None else ("weight", name, str(value.dtype), _shape(value)))
    nodes: Counter = Counter()
    for node in graph:
        source = node.inputs[0] if node.inputs else None
        if node.op_type == "Shape" and node.domain == "" and source is not None and source in graph.inputs and source.shape is not None:
            start = node.attributes["start"].as_int() if "start" in node.attributes else 0
            end = node.attributes["end"].as_int() if "end" in node.attributes else len(source.shape)
            dims = tuple(str(d) for d in list(source.shape)[start:end])
            if all(isinstance(d, ir.SymbolicDim) for d in list(source.shape)[start:end]):
                key = ("dims", dims)  # which input carries the symbol is the tracer's choice
            else:
                key = ("shape", digest[source], start, end)
        else:
            attrs = tuple(sorted((k, _attribute(a)) for k, a in node.attributes.items()))
            inputs = tuple(None if v is None else digest[v] for v in node.inputs)
            key = (node.domain, node.op_type, node.overload, attrs, inputs, _module(node) if modules else "")
        own = hashlib.sha1(repr(key).encode()).hexdigest()
        nodes[f"{node.op_type}:{_module(node) if modules else ''}:{own[:16]}"] += 1
        for i, out in enumerate(node.outputs):
            digest[out] = f"{own}:{i}"
    inputs = tuple((v.name, str(v.dtype), _shape(v)) for v in graph.inputs)
    outputs = tuple((v.name, str(v.dtype), _shape(v), digest.get(v)) for v in graph.outputs)
    return Signature(inputs, outputs, nodes)
