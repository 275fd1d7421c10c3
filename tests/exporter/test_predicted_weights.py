"""The onnxruntime float32 step graph's large weights are streamed while the graph traces, from specs
predicted before the trace (`weight_spec.predicted_specs`): the graph reads every one of them as
predicted, and a wrong prediction costs time, never a byte nothing reads."""

import onnx
import onnx.numpy_helper

from nemotron_deploy.exporter import onnx_export, weight_spec
from nemotron_deploy.exporter.checkpoint import meta_model, open_checkpoint
from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.tracing import finished_graph


def test_the_traced_graph_reads_every_predicted_weight(hf_checkpoints, config_name):
    _, ckpt_dir = hf_checkpoints(config_name)
    ckpt = open_checkpoint(ckpt_dir)
    model = meta_model(ckpt, "float32")
    predicted = weight_spec.predicted_specs(model, "float32", min_bytes=onnx_export._INLINE_MAX)
    _, specs = finished_graph(ckpt, model, "step", "onnxruntime")
    assert set(predicted) <= set(specs.values()), set(predicted) - set(specs.values())
    linear = [s for s in predicted if s.layouts]
    assert linear and len(linear) < len(predicted)  # the Linear weights (transposed) and the embedding


def _referenced_ranges(artifact) -> list[tuple[int, int]]:
    model = onnx.load(str(artifact / "step.onnx"), load_external_data=False)
    ranges = set()
    for tensor in model.graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        if info:
            ranges.add((int(info["offset"]), int(info["length"])))
    return sorted(ranges)


def _initializers(artifact) -> dict[str, bytes]:
    model = onnx.load(str(artifact / "step.onnx"))
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def test_a_wrong_prediction_streams_again_and_writes_nothing_unread(hf_checkpoints, tmp_path, monkeypatch):
    _, ckpt_dir = hf_checkpoints("hybrid_moe_groups")
    right = export_artifact(ckpt_dir, tmp_path / "right", progress=False, trace_cache=False)
    predict = weight_spec.predicted_specs

    def wrong(model, dtype, min_bytes=0):  # the first Linear weight predicted as stored, not transposed
        specs = predict(model, dtype, min_bytes)
        first = next(i for i, s in enumerate(specs) if s.layouts)
        return specs[:first] + [weight_spec.WeightSpec(specs[first].param, dtype)] + specs[first + 1 :]

    monkeypatch.setattr(weight_spec, "predicted_specs", wrong)
    warnings = []
    monkeypatch.setattr(onnx_export.log, "warning", lambda fmt, *args: warnings.append(fmt % args))
    again = export_artifact(ckpt_dir, tmp_path / "again", progress=False, trace_cache=False)
    assert len(warnings) == 1 and "streaming every weight again" in warnings[0], warnings
    assert _initializers(again) == _initializers(right)
    for artifact in (right, again):  # every byte of weights.data is an initializer's (but the 64-byte alignment)
        ranges, end, gaps = _referenced_ranges(artifact), 0, 0
        for offset, length in ranges:
            gaps += max(0, offset - end)
            end = max(end, offset + length)
        assert end == (artifact / "weights.data").stat().st_size and gaps < 64 * len(ranges), artifact.name
