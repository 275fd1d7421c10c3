"""The step model -> one ONNX graph (onnx_ir), traced on the `meta` device: shapes, no weights.

torch.onnx's dynamo exporter runs the model's Python once per graph with fake tensors, so its time
grows with the number of layers (and the ops per layer), not with the weights or the expert count:
every MoE layer is one node (or a fixed handful of ops) whatever its number of experts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from nemotron_deploy.exporter import io_spec

if TYPE_CHECKING:
    import onnx_ir as ir

log = logging.getLogger(__name__)

OPSET = 18
ONNXRUNTIME_OPSET = 23  # RMSNormalization (opset 23) is one fused kernel in onnxruntime


def opset(target: str) -> int:
    """The default-domain opset of a target's graphs. TensorRT's parsers take 18; onnxruntime 23."""
    return ONNXRUNTIME_OPSET if target == "onnxruntime" else OPSET


def _states(cfg, layers=None) -> list:
    """The past states of `layers` (default: every layer), in argument order."""
    return [s for s in io_spec.state_specs(cfg, "past") if layers is None or s.layer in layers]


def example_inputs(model, graph: str, layers=None):
    """Tracing inputs on the model's device: batch 2, past 3, and for prefill 2 chunks + 3 tokens
    (several chunks, not a multiple of chunk_size), so no dimension is specialised to 0, 1 or a chunk
    multiple. layers: trace only these layers' states (default all)."""
    import torch

    cfg = model.cfg
    batch, past = 2, 3
    new = 1 if graph == "decode" else 2 * cfg.chunk_size + 3
    device = model.embeddings.weight.device
    state = model.initial_state(batch)
    for spec in _states(cfg, layers):
        if spec.role in ("key", "value"):
            shape = list(state[spec.name].shape)
            shape[2] = past
            state[spec.name] = torch.zeros(shape, dtype=state[spec.name].dtype, device=device)
    ids = torch.zeros(batch, new, dtype=torch.int64, device=device)
    mask = torch.ones(batch, past + new, dtype=torch.int64, device=device)
    return (ids, mask, *(state[s.name] for s in _states(cfg, layers)))


def dynamic_shapes(cfg, graph: str, layers=None):
    """torch.export's dynamic dimensions, from the step contract's symbolic shapes."""
    import torch

    dyn = torch.export.Dim.DYNAMIC
    states = tuple({0: dyn, 2: dyn} if s.role in ("key", "value") else {0: dyn} for s in _states(cfg, layers))
    ids_dims = {0: dyn} if graph == "decode" else {0: dyn, 1: dyn}
    # the states are the forward's *states: none at all (a model of MoE / MLP layers only) is no element
    return (ids_dims, {0: dyn, 1: dyn}, states) if states else (ids_dims, {0: dyn, 1: dyn})


def trace_graph(model, graph: str, target: str = "onnxruntime", on_layer=None, layers=None, kv_in_place: bool = False):
    """torch.onnx (dynamo) export of one step graph (`StepGraph(model, graph, target, layers)`) -> onnx_ir
    Model whose initializers are the model's parameters by name (meta tensors when the model is on `meta`).

    on_layer(i): called as the tracer enters layer i (progress).
    layers: trace only these layers (exporter/stitch.py), their states only; default every layer.
    kv_in_place: attention as onnxruntime's GroupQueryAttention (`Lowering.kv_in_place`).
    """
    import torch

    from nemotron_deploy.exporter.modeling.model import StepGraph

    cfg = model.cfg
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision not installed"
    with contextlib.ExitStack() as stack:
        if on_layer is not None:
            for i, block in enumerate(model.layers):
                hook = block.norm.register_forward_pre_hook(lambda *_, i=i: on_layer(i))
                stack.callback(hook.remove)
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # deprecation chatter from torch's own pytree / exporter internals
        try:
            program = torch.onnx.export(
                StepGraph(model, graph, target, layers, kv_in_place),
                example_inputs(model, graph, layers),
                dynamo=True,
                opset_version=opset(target),
                optimize=False,
                verbose=False,
                input_names=[s.name for s in io_spec.step_inputs(cfg) if s.layer is None or layers is None or s.layer in layers],
                output_names=[s.name for s in io_spec.step_outputs(cfg) if s.layer is None or layers is None or s.layer in layers],
                dynamic_shapes=dynamic_shapes(cfg, graph, layers),
            )
        except Exception as e:  # an exporter failure is a bug of ours, but say which graph
            raise RuntimeError(f"torch.onnx.export of the {graph} graph failed: {e}") from e
    program.model.graph.name = f"nemotron_h_{graph}"
    return program.model


def trace_stitched(model, graph: str, target: str, on_layer=None, on_stitch=None, kv_in_place: bool = False) -> ir.Model:
    """The step graph `trace_graph` would trace, from one trace of `representatives` only.
    on_layer(i): as the tracer enters layer i; on_stitch(): as stitching begins."""
    from nemotron_deploy.exporter import stitch

    reps = stitch.representatives(model.cfg.layer_types)
    traced = trace_graph(model, graph, target, on_layer=on_layer, layers=reps, kv_in_place=kv_in_place)
    if on_stitch is not None:
        on_stitch()
    if len(reps) == len(model.cfg.layer_types):
        return traced
    try:
        return stitch.stitch(traced, model, reps)
    except stitch.CannotStitch as e:  # never a wrong graph: the slow, whole-model trace instead
        log.warning("%s; tracing every layer of the %s graph instead", e, graph)
        return trace_graph(model, graph, target, on_layer=on_layer, kv_in_place=kv_in_place)


def finished_graph(
    ckpt, model, graph: str, target: str, on_layer=None, quantize=None, stitched: bool = True, on_phase=None, kv_in_place: bool = False
):
    """Trace one graph and run the graph passes: (onnx_ir Model, {initializer: WeightSpec}).

    The weights are not bound yet (see onnx_export); every weight initializer holds a placeholder.
    quantize: a `QuantScheme` for `export --quantize` (onnxruntime target), or None.
    stitched: trace one layer of each kind and copy it for the others (exporter/stitch.py); False
    traces every layer (the reference the stitched graph is tested against).
    on_phase(name): called as "stitch" and then "passes" begin (the export's time split).
    kv_in_place: attention as onnxruntime's GroupQueryAttention (`Lowering.kv_in_place`).
    """
    from nemotron_deploy.exporter import graph_passes, stitch
    from nemotron_deploy.exporter import quantize as quantization

    on_phase = on_phase or (lambda name: None)
    if stitched:
        ir_model = trace_stitched(model, graph, target, on_layer=on_layer, on_stitch=lambda: on_phase("stitch"), kv_in_place=kv_in_place)
    else:
        ir_model = trace_graph(model, graph, target, on_layer=on_layer, kv_in_place=kv_in_place)
    on_phase("passes")
    stitch.eliminate_common_subexpressions(ir_model)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    specs = graph_passes.weight_specs(ir_model, params)
    graph_passes.fold_weight_layouts(ir_model, specs)
    if quantize is not None:
        limit = quantization.part_limit(quantization.stored_bytes(model, quantize))
        quantization.quantize_graph(ir_model, specs, quantize, set(quantization.quantized_parameters(model)), limit)
    graph_passes.fold_small_constants(ir_model, set(specs))
    graph_passes.name_by_module(ir_model)
    kernel_layout = io_spec.ssm_kernel_layout(target, graph)
    if kernel_layout:
        graph_passes.ssm_states_in_kernel_layout(ir_model)
    graph_passes.name_dims(ir_model, model.cfg, graph, kernel_layout)
    return ir_model, specs


class BackgroundTrace:
    """`finished_graph` in a second Python process (a plain subprocess, so it works whatever started
    this one: a script, `python -`, a notebook), so that two graphs trace at once on a machine with two
    or more cores. The worker writes the ModelProto (weights as external-data placeholders) and the
    weight specs (JSON) to `workdir`, which the caller owns and deletes."""

    def __init__(self, checkpoint_dir, dtype: str, graph: str, target: str, workdir: Path, quantize=None, kv_in_place: bool = False):
        import subprocess
        import sys

        self.graph = graph
        self._out = Path(workdir) / f".{graph}.trace"
        scheme = "none" if quantize is None else f"{quantize.name}:{quantize.block_size}"
        cmd = [sys.executable, "-m", "nemotron_deploy.exporter.tracing", str(checkpoint_dir), dtype, graph, target, str(self._out), scheme]
        cmd.append("kv-in-place" if kv_in_place else "kv-concat")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def result(self):
        """(onnx_ir Model, specs, seconds); raises RuntimeError if the worker failed."""
        _, err = self._proc.communicate()
        if self._proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"tracing the {self.graph} graph in a second process failed (exit {self._proc.returncode}): {tail[0]}")
        ir_model, specs, meta = load_finished(self._out)
        for suffix in (".onnx", ".json"):
            self._out.with_suffix(suffix).unlink()
        return ir_model, specs, meta["seconds"]

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def save_finished(ir_model, specs: dict, stem: Path, **meta) -> None:
    """A finished graph as <stem>.onnx, every weight a placeholder without data (`ir_model`'s too: bind
    its weights after this), and <stem>.json: the weight specs and `meta`."""
    import onnx
    import onnx_ir as ir

    for name in specs:
        value = ir_model.graph.initializers[name]
        value.const_value = ir.ExternalTensor("pending", None, None, value.dtype, shape=value.shape, name=name)
    onnx.save_model(ir.serde.serialize_model(ir_model), str(stem.with_suffix(".onnx")))
    stem.with_suffix(".json").write_text(json.dumps({**meta, "specs": {name: spec.to_json() for name, spec in specs.items()}}))


def load_finished(stem: Path):
    """(onnx_ir Model, {initializer: WeightSpec}, the rest of <stem>.json) of `save_finished`'s files."""
    import onnx
    import onnx_ir as ir

    from nemotron_deploy.exporter.weight_spec import WeightSpec

    meta = json.loads(stem.with_suffix(".json").read_text())
    specs = {name: WeightSpec.from_json(raw) for name, raw in meta.pop("specs").items()}
    ir_model = ir.serde.deserialize_model(onnx.load_model(str(stem.with_suffix(".onnx")), load_external_data=False))
    missing = sorted(set(specs) - set(ir_model.graph.initializers))
    if missing:
        raise ValueError(f"weight {missing[0]!r} is not an initializer of the graph")
    return ir_model, specs, meta


def _trace_worker(checkpoint_dir: str, dtype: str, graph: str, target: str, out: str, scheme: str, kv: str) -> None:
    import time

    from nemotron_deploy.exporter.checkpoint import meta_model, open_checkpoint
    from nemotron_deploy.exporter.quantize import QuantScheme

    start = time.perf_counter()
    ckpt = open_checkpoint(checkpoint_dir)
    quantize = None if scheme == "none" else QuantScheme.parse(scheme.split(":")[0], int(scheme.split(":")[1]))
    ir_model, specs = finished_graph(ckpt, meta_model(ckpt, dtype), graph, target, quantize=quantize, kv_in_place=kv == "kv-in-place")
    save_finished(ir_model, specs, Path(out), seconds=time.perf_counter() - start)


if __name__ == "__main__":
    import sys

    _trace_worker(*sys.argv[1:])
