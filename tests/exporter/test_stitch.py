"""Tracing constant in depth (exporter/stitch.py): one layer of each kind traced, the rest copied.

The stitched graph is checked against a whole-model trace of the same checkpoint, node for node
(exporter/graph_equivalence.py), after every graph pass; tokens against transformers are the parity
tests' (every export is stitched).
"""

import pytest
import torch
from helpers import SMALL_WIDTHS

from nemotron_deploy.exporter import stitch, tracing
from nemotron_deploy.exporter.checkpoint import meta_model, open_checkpoint
from nemotron_deploy.exporter.graph_equivalence import signature
from nemotron_deploy.exporter.quantize import QuantScheme
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.exporter.tracing import finished_graph

SMALL = dict(TINY_CONFIG, **SMALL_WIDTHS, n_routed_experts=4)


def _checkpoint(tmp_path, pattern: str):
    return write_random_checkpoint(tmp_path / pattern.replace("*", "A"), config=dict(SMALL, hybrid_override_pattern=pattern))


def _model(checkpoint, dtype: str = "float32"):
    return meta_model(open_checkpoint(checkpoint), dtype)


def test_representatives_are_the_first_layer_of_each_kind():
    assert stitch.representatives(("mamba", "moe", "mamba", "attention", "moe", "mamba")) == (0, 1, 3)
    assert stitch.representatives(("mlp",)) == (0,)


def test_the_number_of_traces_does_not_grow_with_depth(tmp_path, monkeypatch):
    """A 2-layer and a 12-layer model of the same kinds: one torch.onnx trace each, of two layers each."""
    calls = []
    export = torch.onnx.export

    def counted(*args, **kwargs):
        calls.append(len(args[0].layer_ids))  # the StepGraph traced: how many layers it runs
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counted)
    counts = {}
    for pattern in ("ME", "ME" * 6):
        model = _model(_checkpoint(tmp_path, pattern))
        calls.clear()
        ir_model, _ = finished_graph(None, model, "step", "onnxruntime")
        counts[pattern] = list(calls)
        nodes = [n.name for n in ir_model.graph]
        assert any(name.startswith(f"layers.{len(pattern) - 1}.mixer") for name in nodes), "the last layer's nodes are named after it"
        assert [v.name for v in ir_model.graph.outputs][-1] == f"present.{len(pattern) - 2}.ssm"
    assert counts["ME"] == counts["ME" * 6] == [2]


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """Mamba, MoE and attention, the Mamba and MoE layers repeated (pattern M E * M E M)."""
    return _checkpoint(tmp_path_factory.mktemp("stitch"), "ME*MEM")


@pytest.mark.parametrize(
    "graph, target, dtype, quantize",
    [
        ("step", "onnxruntime", "float32", None),
        ("step", "onnxruntime", "float32", "int4"),
        ("prefill", "tensorrt", "float16", None),
        ("decode", "tensorrt", "float32", None),
    ],
)
def test_the_stitched_graph_equals_a_whole_model_trace(hybrid, graph, target, dtype, quantize):
    model = _model(hybrid, dtype)
    scheme = QuantScheme.parse(quantize, 16) if quantize else None
    whole, whole_specs = finished_graph(None, model, graph, target, quantize=scheme, stitched=False)
    stitched, stitched_specs = finished_graph(None, model, graph, target, quantize=scheme, stitched=True)
    assert stitched_specs == whole_specs  # the same weights by name, stored the same way
    assert list(stitched_specs) == list(whole_specs)  # in the same order: weights.data's layout
    assert len(stitched.graph.initializers) == len(whole.graph.initializers)  # folded constants: compared by value below
    assert signature(stitched).differences(signature(whole)) == []
    assert len(list(stitched.graph)) == len(list(whole.graph))


def test_the_stitched_kv_in_place_graph_equals_a_whole_model_trace(tmp_path):
    """Two attention layers as GroupQueryAttention nodes (export --kv-in-place): the second a copy."""
    model = _model(_checkpoint(tmp_path, "M*E*M"))
    whole, whole_specs = finished_graph(None, model, "step", "onnxruntime", stitched=False, kv_in_place=True)
    stitched, stitched_specs = finished_graph(None, model, "step", "onnxruntime", stitched=True, kv_in_place=True)
    assert sum(n.op_type == "GroupQueryAttention" for n in stitched.graph) == 2
    assert stitched_specs == whole_specs
    assert signature(stitched).differences(signature(whole)) == []
    assert len(list(stitched.graph)) == len(list(whole.graph))


def test_the_equivalence_sees_a_layer_reading_another_layers_weight(hybrid):
    """The comparison can fail: layer 3 reading layer 0's input projection is a different graph."""
    model = _model(hybrid)
    good, _ = finished_graph(None, model, "decode", "tensorrt")
    bad, _ = finished_graph(None, model, "decode", "tensorrt")
    weights = bad.graph.initializers
    node = next(n for n in bad.graph if any(v is not None and v.name.startswith("layers.3.mixer.in_proj") for v in n.inputs))
    index = next(i for i, v in enumerate(node.inputs) if v is not None and v.name.startswith("layers.3.mixer.in_proj"))
    node.replace_input_with(index, weights[node.inputs[index].name.replace("layers.3.", "layers.0.", 1)])
    assert signature(bad).differences(signature(good))


def test_a_layer_reading_another_layers_values_is_refused(hybrid):
    """A copy would read its representative's value: stitching refuses rather than export a wrong graph."""
    from nemotron_deploy.exporter.tracing import trace_graph

    model = _model(hybrid)
    reps = stitch.representatives(model.cfg.layer_types)
    traced = trace_graph(model, "decode", "tensorrt", layers=reps)
    sections = stitch._Sections(traced.graph, reps)
    layer0_value = sections.layer[0][-2].outputs[0]  # computed from layer 0's hidden state
    victim = next(n for n in sections.layer[1] if n.inputs and n.inputs[0] is not None and n.op_type != "Constant")
    victim.replace_input_with(0, layer0_value)
    with pytest.raises(stitch.CannotStitch, match="in layer 1 reads .*a value of another layer"):
        stitch.stitch(traced, model, reps)


def test_a_graph_that_cannot_be_stitched_is_traced_whole(tmp_path, monkeypatch):
    """Whatever stitching refuses costs time, never a wrong graph: every layer is traced instead."""
    traced_layers = []
    trace_graph = tracing.trace_graph

    def counted(model, graph, target, on_layer=None, layers=None, kv_in_place=False):
        traced_layers.append(layers)
        return trace_graph(model, graph, target, on_layer=on_layer, layers=layers, kv_in_place=kv_in_place)

    def refuse(*args):
        raise stitch.CannotStitch("stitching: refused for the test")

    monkeypatch.setattr(tracing, "trace_graph", counted)
    monkeypatch.setattr(stitch, "stitch", refuse)
    ir_model = tracing.trace_stitched(_model(_checkpoint(tmp_path, "MM")), "decode", "tensorrt")
    assert traced_layers == [(0,), None]
    assert [v.name for v in ir_model.graph.outputs] == ["logits", "present.0.conv", "present.0.ssm", "present.1.conv", "present.1.ssm"]
