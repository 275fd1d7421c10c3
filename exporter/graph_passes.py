"""Passes over a traced graph (onnx_ir) before its weights are written.

fold_weight_layouts   Transpose / Cast / layout-marker nodes applied to a weight become the
                      weight's stored layout (a `WeightSpec`), so runtimes read weights as their
                      consumers want them and no session re-folds them at load time
fold_small_constants  shape arithmetic and other constant sub-graphs folded (weights untouched)
name_by_module        node names say which layer and module they came from (provenance)
name_dims             the step contract's dimension names (batch, past_len, ...) in the graph
ssm_states_in_kernel_layout
                      the onnxruntime step graph's SSM states as LinearAttention keeps them: the
                      Transposes around it at the graph's inputs and outputs removed
"""

from __future__ import annotations

import ast
import re

import onnx_ir as ir

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.plugin_nodes import LAYOUT_DOMAIN
from nemotron_deploy.exporter.weight_spec import WeightSpec, layout_shape, placeholder_value
from nemotron_deploy.runtime.artifact.dtypes import DTYPES, FLOAT_DTYPES, from_onnx


def weight_specs(model: ir.Model, params: dict) -> dict[str, WeightSpec]:
    """Initializer name -> its spec, for every initializer that is a model parameter or buffer.

    params: the traced model's named parameters and buffers (meta tensors). Any other initializer is a
    constant the tracer lifted; it must hold real data (it is kept as is).
    """
    specs = {}
    for name, value in model.graph.initializers.items():
        if name in params:
            specs[name] = WeightSpec(name, str(params[name].dtype).removeprefix("torch."))
        elif getattr(getattr(value.const_value, "raw", None), "device", None) is not None and value.const_value.raw.device.type == "meta":
            raise RuntimeError(f"initializer {name!r} has no data and is not a parameter of the model")
    return specs


def fold_weight_layouts(model: ir.Model, specs: dict[str, WeightSpec]) -> None:
    """Fold single-input layout nodes (Transpose, Cast, RepeatRows markers) on weights into their specs.

    A weight used only through such a node is replaced by the folded one (same name); one also used
    as it is keeps its name and the folded variant gets a suffix. Runs in graph order, so chains
    (Cast then Transpose) fold completely. Updates `specs` in place.
    """
    graph = model.graph
    for node in list(graph):
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if source is None or source.name not in specs or not source.is_initializer():
            continue
        spec = specs[source.name]
        if node.op_type == "Transpose" and node.domain == "":
            perm = tuple(node.attributes["perm"].as_ints()) if "perm" in node.attributes else tuple(reversed(range(len(source.shape))))
            folded, suffix = spec.with_layout("transpose", perm), "transposed"
        elif node.op_type == "Cast" and node.domain == "" and from_onnx(node.attributes["to"].as_int()).name in FLOAT_DTYPES:
            folded = spec.with_dtype(from_onnx(node.attributes["to"].as_int()).name)
            suffix = folded.dtype
        elif node.op_type == "RepeatRows" and node.domain == LAYOUT_DOMAIN:
            folded, suffix = spec.with_layout("repeat_rows", node.attributes["repeats"].as_int()), "repeat_rows"
        else:
            continue
        only_use = len(source.uses()) == 1
        name = source.name if only_use else f"{source.name}.{suffix}"
        out = node.outputs[0]
        shape = ir.Shape(layout_shape(tuple(source.shape.numpy()), folded.layouts[len(spec.layouts) :]))
        dtype = ir.DataType(DTYPES[folded.dtype].onnx)
        value = placeholder_value(name, dtype, shape)
        ir.convenience.replace_all_uses_with(out, value)
        if out in graph.outputs:
            raise RuntimeError(f"{node.name}: a folded weight is a graph output")
        graph.remove(node, safe=True)
        if only_use:
            graph.initializers.pop(source.name)
            del specs[source.name]
        graph.register_initializer(value)
        specs[name] = folded


def fold_small_constants(model: ir.Model, weights: set[str]) -> None:
    """onnxscript's constant folding on everything but the weights (their data is not here yet), then
    unused nodes removed. (Its general rewriter is skipped: far too slow on real models.)"""
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants

    def should_fold(node: ir.Node):
        return False if any(v is not None and v.name in weights and v.is_initializer() for v in node.inputs) else None

    fold_constants(model, should_fold=should_fold)
    RemoveUnusedNodesPass()(model)


def name_by_module(model: ir.Model) -> None:
    """`layers.3.mixer.in_proj/node_linear`, `layers.5.mixer/node_MoE_1`: the innermost module a node was
    traced in, then its own name; tracer metadata (Python stack traces: large, of no use to a runtime) is dropped."""
    for node in model.graph:
        scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
        module = ""
        if scopes:
            try:
                names = ast.literal_eval(scopes)
                module = names[-2] if len(names) >= 2 and not names[-2].startswith("_empty_nn_module_stack") else ""
            except (ValueError, SyntaxError):
                pass
        own = node.name.replace("node__symbolic", f"node_{node.op_type}")  # custom nodes: say which op
        node.name = f"{module or 'model'}/{own}"
        node.metadata_props.clear()
        node.doc_string = None


_SYMBOL = re.compile(r"\bs\d+\b")


def name_dims(model: ir.Model, cfg, graph_kind: str, ssm_kernel_layout: bool = False) -> None:
    """Replace the tracer's symbols (s0, s19 + 1, ...) by the step contract's names everywhere, and give
    every graph input and output exactly its contract shape (decode: new_tokens = 1; the SSM states in
    the kernel's layout where `ssm_states_in_kernel_layout` ran)."""
    graph = model.graph
    layout = dict(ssm_kernel_layout=ssm_kernel_layout)
    contract = {s.name: s.shape for s in [*io_spec.step_inputs(cfg, **layout), *io_spec.step_outputs(cfg, **layout)]}
    symbols: dict[str, str] = {}
    for value in graph.inputs:
        for traced, want in zip(value.shape, contract[value.name]):
            if isinstance(want, str) and isinstance(traced, ir.SymbolicDim) and traced.value and _SYMBOL.fullmatch(traced.value):
                symbols.setdefault(traced.value, want)

    def rename(shape: ir.Shape | None) -> ir.Shape | None:
        if shape is None:
            return None
        dims = [
            ir.SymbolicDim(_SYMBOL.sub(lambda m: symbols.get(m[0], m[0]), d.value)) if isinstance(d, ir.SymbolicDim) and d.value else d
            for d in shape
        ]
        return ir.Shape(dims)

    for node in graph:
        for out in node.outputs:
            out.shape = rename(out.shape)
    for value in [*graph.inputs, *graph.outputs]:
        want = contract[value.name]
        if graph_kind == "decode":
            want = tuple(1 if d == "new_tokens" else d for d in want)
        value.shape = ir.Shape(list(want))


_SWAP_LAST_TWO = [0, 1, 3, 2]


def _is_swap(node: ir.Node | None) -> bool:
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return False
    perm = node.attributes.get("perm")
    return perm is not None and list(perm.as_ints()) == _SWAP_LAST_TWO


def ssm_states_in_kernel_layout(model: ir.Model) -> None:
    """Every `past.*.ssm` input feeds exactly one Transpose (0, 1, 3, 2) and every `present.*.ssm` output
    comes from one (the step contract's (B, H, P, N) around LinearAttention's (B, H, N, P)): drop them,
    so the graph's SSM states are in the kernel's layout (`io_spec.ssm_kernel_layout`; `name_dims` then
    gives the new shapes). Raises RuntimeError if any state does not have that pattern: half a graph
    in one layout would compute nonsense."""
    graph = model.graph
    for value in graph.inputs:
        if value.name.endswith(".ssm"):
            uses = list(value.uses())
            node = uses[0][0] if len(uses) == 1 else None
            if not _is_swap(node):
                raise RuntimeError(f"ssm_states_in_kernel_layout: input {value.name} does not feed one Transpose {_SWAP_LAST_TWO}")
            node.outputs[0].replace_all_uses_with(value)
            graph.remove(node, safe=True)
    for index, value in enumerate(list(graph.outputs)):
        if value.name.endswith(".ssm"):
            node = value.producer()
            if not _is_swap(node) or len(list(value.uses())) != 0:
                raise RuntimeError(f"ssm_states_in_kernel_layout: output {value.name} does not come from one Transpose {_SWAP_LAST_TWO}")
            source, name = node.inputs[0], value.name
            graph.outputs[index] = source
            graph.remove(node, safe=True)
            source.name = name
