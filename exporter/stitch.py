"""Tracing constant in depth: the first layer of each kind traced, every other layer a copy of it.

torch.onnx's time grows with the number of layers (~0.9 s per layer of the benchmark model, minutes for
a 52-layer one), yet every layer of a kind computes the same graph with its own weights and states. So
`trace_stitched` traces a step graph of the model's *representative* layers (the first of each kind,
`representatives`) and `stitch` builds the whole step graph from it: for every other layer, a copy of
its representative's nodes with the layer's own weights (`layers.K.` -> `layers.N.`), states
(`past.K.` -> `past.N.`, `present.K.` -> `present.N.`) and provenance (the name scopes
`graph_passes.name_by_module` reads). Between layers only the hidden state flows; whatever else a layer
reads from outside itself (the step's new-token mask, attention bias, decode flag, shape arithmetic of
the inputs, small constants) is shared, as in a whole-model trace. `stitch` checks that, and refuses a
graph where a layer reads another layer's values.

A whole-model trace shares the constants and shape arithmetic it made for the first layer of a kind
with the later ones, where copies each carry their own: common-subexpression elimination
(`eliminate_common_subexpressions`, run on every traced graph) merges them, and the stitched graph
equals the whole trace node for node (tests/exporter/test_stitch.py).
"""

from __future__ import annotations

import ast
import logging
import re

import onnx_ir as ir

from nemotron_deploy.exporter.weight_spec import placeholder_value

_SCOPES = "pkg.torch.onnx.name_scopes"
log = logging.getLogger(__name__)


class CannotStitch(RuntimeError):
    """The traced graph is not one `stitch` can copy layers of (`trace_stitched` then traces every layer)."""


def representatives(layer_types) -> tuple[int, ...]:
    """The first layer of each kind, in layer order: what `trace_stitched` traces. Within one model the
    layers of a kind share their widths, so a kind is a layer's whole signature (the graph kind, target
    and dtype are the trace's)."""
    first: dict[str, int] = {}
    for i, kind in enumerate(layer_types):
        first.setdefault(kind, i)
    return tuple(sorted(first.values()))


def eliminate_common_subexpressions(model: ir.Model) -> None:
    """Equal nodes on equal inputs computed once (onnx_ir's pass: small constants, shape arithmetic)."""
    from onnx_ir.passes.common import CommonSubexpressionEliminationPass

    CommonSubexpressionEliminationPass()(model)


def _layer_of(node: ir.Node) -> int | None:
    """The layer a traced node belongs to, from its torch module scopes (None: outside every layer)."""
    scopes = node.metadata_props.get(_SCOPES)
    if not scopes:
        return None
    for name in ast.literal_eval(scopes):
        if name.startswith("layers."):
            return int(name.split(".")[1])
    return None


class _Sections:
    """The traced graph cut into: shared nodes before the first layer, each layer's nodes (its residual
    add last), and the shared nodes that follow each layer (the epilogue after the last)."""

    def __init__(self, graph: ir.Graph, reps: tuple[int, ...]):
        self.prologue: list[ir.Node] = []
        self.layer: dict[int, list[ir.Node]] = {r: [] for r in reps}
        self.after: dict[int, list[ir.Node]] = {r: [] for r in reps}
        current = None
        for node in graph:
            layer = _layer_of(node)
            if layer is None:
                (self.prologue if current is None else self.after[current]).append(node)
                continue
            if layer not in self.layer:
                raise CannotStitch(f"stitching: node {node.name} is in layer {layer}, which was not traced")
            if layer != current and self.layer[layer]:
                raise CannotStitch(f"stitching: the nodes of layer {layer} are not contiguous in the traced graph ({node.name})")
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                raise CannotStitch(f"stitching: {node.name} in layer {layer} has a subgraph, which copies do not rename")
            current = layer
            self.layer[layer].append(node)
        self.hidden_in = {r: self._hidden_in(r) for r in reps}

    def _hidden_in(self, r: int) -> ir.Value:
        """The hidden state layer r reads: the input of its residual add (its last node) that the layer
        did not compute."""
        nodes = self.layer[r]
        add = nodes[-1]
        if add.op_type != "Add" or f"layers.{r}.residual" not in add.metadata_props.get(_SCOPES, ""):
            raise CannotStitch(f"stitching: layer {r}'s last node is {add.op_type} {add.name}, not its residual add")
        own = set(nodes)
        outside = [v for v in add.inputs if v is not None and v.producer() not in own]
        if len(outside) != 1:
            raise CannotStitch(
                f"stitching: layer {r}'s residual add reads {len(outside)} values from outside the layer, expected the hidden state"
            )
        return outside[0]


def _layer_local(graph: ir.Graph, sections: _Sections) -> set[ir.Value]:
    """Values that differ from layer to layer: computed from the values of the hidden state, a state
    input or a layer's weight. A layer may read only its hidden input and shared values from outside
    itself."""
    seeds = {sections.hidden_in[min(sections.layer)]}
    seeds |= {v for v in graph.inputs if v.name.startswith("past.")}
    seeds |= {v for name, v in graph.initializers.items() if name.startswith("layers.")}
    local = set(seeds)
    for node in graph:
        # a shape is shared: the step contract gives every layer of a kind the same state shapes (the
        # tracer reads past_len off the first attention layer's K for all of them)
        if node.op_type not in ("Shape", "Size") and any(v in local for v in node.inputs if v is not None):
            local.update(node.outputs)
    return local


def stitch(traced: ir.Model, model, reps: tuple[int, ...]) -> ir.Model:
    """The whole step graph of `model` from `traced`, a trace of its layers `reps` (one per kind).

    Layer N (kind k) is the traced layer of kind k, its nodes copied unless N is that layer, reading N's
    weights and states and the hidden state layer N-1 left. The result's inputs, outputs and
    initializers are those of a whole-model trace, in the step contract's order (exporter/io_spec.py).
    """
    from nemotron_deploy.exporter import io_spec

    cfg, graph = model.cfg, traced.graph
    source_of = {i: next(r for r in reps if cfg.layer_types[r] == kind) for i, kind in enumerate(cfg.layer_types)}
    sections = _Sections(graph, reps)
    _check_layers_independent(graph, sections)
    copier = _Copier(graph, set(dict(model.named_parameters()) | dict(model.named_buffers())))
    inputs = [copier.input(spec.name, source_of) for spec in io_spec.step_inputs(cfg)]
    for node in sections.prologue:
        copier.emit(node)
    hidden = None
    for layer, source in source_of.items():
        hidden = copier.emit_layer(sections, source, layer, hidden)
        if layer == source and source != reps[-1]:
            for node in sections.after[source]:  # shared values (checked): made once, where traced
                copier.emit(node)
    last_hidden = sections.layer[reps[-1]][-1].outputs[0]
    copier.values[last_hidden] = hidden
    for node in sections.after[reps[-1]]:  # the epilogue: final norm and head on the last layer's output
        copier.emit(node)
    outputs = [copier.values[graph.outputs[0]], *(copier.presents[spec.name] for spec in io_spec.state_specs(cfg, "present"))]
    initializers = _in_trace_order(copier.initializers, model)
    stitched = ir.Graph(inputs, outputs, nodes=copier.nodes, initializers=initializers, opset_imports=graph.opset_imports, name=graph.name)
    return ir.Model(
        stitched,
        ir_version=traced.ir_version,
        producer_name=traced.producer_name,
        producer_version=traced.producer_version,
        functions=list(traced.functions.values()),
    )


def _in_trace_order(values: list[ir.Value], model) -> list[ir.Value]:
    """The initializers in the order a whole-model trace lists them, which sets weights.data's layout:
    torch.export lifts the parameters in the model's order, then the buffers; anything else after."""
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    rank = {name: k for k, name in enumerate(names)}
    return sorted(values, key=lambda v: rank.get(v.name, len(rank)))


def _check_layers_independent(graph: ir.Graph, sections: _Sections) -> None:
    """Refuse a traced graph where a layer reads a value of another layer other than its hidden input:
    a copy would read the representative's value instead of its own."""
    local = _layer_local(graph, sections)
    for r, nodes in sections.layer.items():
        own = set(nodes)
        for node in nodes:
            for v in node.inputs:
                if v is None or v not in local or v.producer() in own or v is sections.hidden_in[r]:
                    continue
                if v.producer() is None and v.name.startswith((f"past.{r}.", f"layers.{r}.")):
                    continue  # the layer's own state or weight
                raise CannotStitch(f"stitching: {node.name} in layer {r} reads {v.name}, a value of another layer")
    for r, nodes in sections.after.items():
        if r == max(sections.after):
            continue
        for node in nodes:
            if any(v is not None and v in local for v in node.inputs):
                raise CannotStitch(f"stitching: {node.name}, between layers, reads a value of a layer")


class _Copier:
    """Builds the stitched graph's nodes, values and initializers from the traced graph's.

    values: traced value -> its stitched value, for everything outside a copied layer (a copy's own
    values live in a per-copy map)."""

    def __init__(self, graph: ir.Graph, params: set[str]):
        self.graph, self.params = graph, params
        self.values: dict[ir.Value, ir.Value] = {}
        self.nodes: list[ir.Node] = []
        self.presents: dict[str, ir.Value] = {}
        self.initializers: list[ir.Value] = []
        self.by_name: dict[str, ir.Value] = {}
        self._traced_inputs = {v.name: v for v in graph.inputs}
        for name, old in graph.initializers.items():
            self._add_initializer(ir.Value(name=name, shape=old.shape, type=old.type, const_value=old.const_value), old)

    def _add_initializer(self, value: ir.Value, old: ir.Value | None = None) -> ir.Value:
        self.initializers.append(value)
        self.by_name[value.name] = value
        if old is not None:
            self.values[old] = value
        return value

    def input(self, name: str, source_of: dict[int, int]) -> ir.Value:
        """The stitched graph's input `name`; a copied layer's state input is shaped as its source's."""
        parts = name.split(".")
        copied = parts[0] == "past" and source_of[int(parts[1])] != int(parts[1])
        old = self._traced_inputs[f"past.{source_of[int(parts[1])]}.{parts[2]}" if copied else name]
        new = ir.Value(name=name, shape=old.shape.copy() if old.shape is not None else None, type=old.type)
        self.by_name[name] = new
        if not copied:
            self.values[old] = new
        return new

    def emit(self, node: ir.Node, local: dict | None = None, source: int | None = None, layer: int | None = None) -> None:
        """Append a copy of `node`. local, source, layer: a copied layer's value map, and which layer it copies
        to which (its weights, states, values and scopes renamed)."""
        copy = local is not None
        inputs = [None if v is None else self._lookup(v, local, source, layer) for v in node.inputs]
        metadata = {}
        if _SCOPES in node.metadata_props:
            scopes = node.metadata_props[_SCOPES]
            metadata[_SCOPES] = re.sub(rf"'layers\.{source}(?=[.'])", f"'layers.{layer}", scopes) if copy else scopes
        new = ir.Node(
            node.domain,
            node.op_type,
            inputs,
            node.attributes.values(),
            overload=node.overload,
            num_outputs=len(node.outputs),
            version=node.version,
            name=node.name,
            metadata_props=metadata,
        )
        for old, out in zip(node.outputs, new.outputs):
            out.name = f"{old.name}.{layer}" if copy else old.name
            out.type, out.shape = old.type, old.shape.copy() if old.shape is not None else None
            (local if copy else self.values)[old] = out
        self.nodes.append(new)

    def _lookup(self, v: ir.Value, local: dict | None, source: int | None, layer: int | None) -> ir.Value:
        if local is not None:
            if v in local:
                return local[v]
            if v.producer() is None and v.name.startswith((f"layers.{source}.", f"past.{source}.")):
                head = v.name.split(".")[0]
                return self._renamed(v, v.name.replace(f"{head}.{source}.", f"{head}.{layer}.", 1))
        return self.values[v]

    def _renamed(self, v: ir.Value, name: str) -> ir.Value:
        """Layer N's own weight or state in place of its source layer's: an input made in `input`, or a
        weight initializer (a placeholder bound to the checkpoint later, like every weight)."""
        if name in self.by_name:
            return self.by_name[name]
        if name not in self.params:
            raise CannotStitch(f"stitching: the model has no weight {name!r} (a copy of {v.name!r})")
        return self._add_initializer(placeholder_value(name, v.dtype, v.shape.copy()))

    def emit_layer(self, sections: _Sections, source: int, layer: int, hidden: ir.Value | None) -> ir.Value:
        """Layer `layer` from the traced layer `source`, reading `hidden` (None: as traced, the first
        layer). Its present states become graph outputs. Returns its output hidden state."""
        nodes = sections.layer[source]
        local = None if layer == source else {}
        if hidden is not None:
            if local is None:
                self.values[sections.hidden_in[source]] = hidden
            else:
                local[sections.hidden_in[source]] = hidden
        for node in nodes:
            self.emit(node, local, source, layer)
        produced = self.values if local is None else local
        for out in self.graph.outputs:
            if out.name.startswith(f"present.{source}."):
                value = produced[out]
                value.name = out.name.replace(f"present.{source}.", f"present.{layer}.", 1)
                self.presents[value.name] = value
        return produced[nodes[-1].outputs[0]]
