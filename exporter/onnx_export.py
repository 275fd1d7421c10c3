"""Checkpoint -> artifact directory: the step graphs as ONNX (prefill and decode, or one `step` graph
serving both: `traced_graphs`), weights stored once, manifest.

    checkpoint ──open_checkpoint──> meta model ──trace_graph──> prefill graph ─┐  (shapes only, no weights)
        │ (headers only)                      └───────────────> decode graph  ─┤
        │                                                                       ├─ graph_passes (layouts, names, dims)
        └── memory map ──WeightsFile: one block at a time──> weights.data <─────┘  (shared, each tensor once)
                                                              prefill.onnx, decode.onnx, manifest.json (last)

The weights are never held: the graphs are traced on the `meta` device and every initializer is
streamed from the checkpoint's memory map into `weights.data` (dtype converted, layout applied) when
the graph is saved, so peak memory is a few tensor blocks whatever the model's size
(benchmarks/results/export.md). Everything is written into a hidden temporary directory next to the
output and renamed into place only when complete, so an interrupted export leaves nothing that looks
like an artifact.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.checkpoint import compute_dtype, meta_model, open_checkpoint
from nemotron_deploy.exporter.export_progress import ExportProgress
from nemotron_deploy.exporter.modeling.lowering import STEP
from nemotron_deploy.exporter.read_ahead import ReadAhead
from nemotron_deploy.exporter.trace_cache import TraceCache, default_root
from nemotron_deploy.exporter.tracing import BackgroundTrace, finished_graph, opset
from nemotron_deploy.plugins.contract import CONTRACTS
from nemotron_deploy.runtime.artifact.atomic import new_directory, staging_dir
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError, read_json_object
from nemotron_deploy.runtime.artifact.integrity import file_records
from nemotron_deploy.runtime.artifact.manifest import (
    GRAPHS,
    WEIGHTS_FILE,
    GenerationRecord,
    GraphRecord,
    Manifest,
    ModelRecord,
    PluginRecord,
    StateRecord,
    write_manifest,
)

# onnxruntime: standard ops + com.microsoft.MoE, run by onnxruntime. tensorrt: Mamba2 core and MoE dispatch
# as plugin nodes (docs/plugins.md). tensorrt-rtx: standard ops only, for TensorRT for RTX (no plugin layer).
TARGETS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
# tokenizer / generation files copied from the checkpoint when present
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja")
ONNXRUNTIME_MIN = "1.32"
log = logging.getLogger(__name__)
_INLINE_MAX = 1024  # tensors up to this many bytes stay inside the .onnx


def export_artifact(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    target: str = "onnxruntime",
    dtype: str = "float32",
    progress: bool = True,
    timings: dict | None = None,
    quantize: str | None = None,
    block_size: int | None = None,
    trace_cache: bool = True,
    kv_in_place: bool = False,
) -> Path:
    """Export `checkpoint_dir` to a new artifact directory `out_dir`; returns its path.

    dtype: the graphs' compute dtype (weights, activations, conv and K/V states); the SSM state keeps
    the config's mamba_ssm_cache_dtype (fp32) and logits are fp32.
    timings: if given, filled with seconds per phase and per layer (see `ExportProgress`).
    quantize: "int8" | "int4" for block-wise integer weights (exporter/quantize.py), block_size its
    block length (default 32); onnxruntime target, float32 only.
    trace_cache: take a graph traced before for this architecture from the trace cache, and keep each
    graph traced here in it (exporter/trace_cache.py; off as well when NEMOTRON_DEPLOY_CACHE=none).
    kv_in_place: attention as onnxruntime's GroupQueryAttention, whose K/V cache the onnxruntime runtime
    appends to in place (onnxruntime target, float32 or quantized: its one step graph).
    """
    if target not in TARGETS:
        raise NemotronDeployError(f"--target {target!r}: expected one of {TARGETS}")
    scheme = _quant_scheme(quantize, block_size, target, dtype)
    if target == "onnxruntime" and dtype == "bfloat16":
        raise NemotronDeployError(
            "--dtype bfloat16 with --target onnxruntime: onnxruntime's CPU provider has no bfloat16 kernels "
            "(and opset-18 Einsum/Conv have no bfloat16 type); use float16 or float32 for onnxruntime"
        )
    out = Path(out_dir)
    ckpt = open_checkpoint(checkpoint_dir)  # config + headers only: cheap, and bad input fails first
    model_dtype = compute_dtype(ckpt, dtype)
    _check_kv_in_place(kv_in_place, target, dtype, ckpt.config)
    if scheme is not None:
        _check_quantizable(ckpt, model_dtype, scheme)
    staging = staging_dir(out)  # refuses an existing or uncreatable output before any heavy work
    bars = background = ahead = None
    try:
        with new_directory(out, staging) as tmp:
            model = meta_model(ckpt, model_dtype)
            ahead = ReadAhead(ckpt, (name for name, _ in model.named_parameters()))  # the disk reads while we trace
            bars = ExportProgress(model, enabled=progress)
            traced = traced_graphs(target, model_dtype)
            cached = _CachedGraphs(model, model_dtype, traced, target, scheme, trace_cache, kv_in_place)
            predicted = _predicted(model, traced, target, scheme)
            # decode traces in a second process while this one traces prefill (CPU-bound Python); a step
            # graph whose large weights are predicted traces there while this process streams them
            if len(cached.missing) > 1 and _cores() >= 2:
                background = BackgroundTrace(ckpt.path, model_dtype, "decode", target, workdir=tmp, quantize=scheme)
            elif predicted and cached.missing == [STEP] and _cores() >= 2:
                background = BackgroundTrace(ckpt.path, model_dtype, STEP, target, workdir=tmp, quantize=scheme, kv_in_place=kv_in_place)
            try:
                graphs, weights = _graphs_with_weights(
                    ckpt, model, traced, target, scheme, tmp, bars, background, ahead, cached, predicted, kv_in_place
                )
            except _Mispredicted as e:  # never an artifact with bytes nothing reads: everything streamed again
                log.warning("%s; streaming every weight again after the trace", e)
                for name in [WEIGHTS_FILE] + [f"{g}.onnx" for g in traced]:
                    (tmp / name).unlink(missing_ok=True)
                cached = _CachedGraphs(model, model_dtype, traced, target, scheme, trace_cache, kv_in_place)
                graphs, weights = _graphs_with_weights(ckpt, model, traced, target, scheme, tmp, bars, None, ahead, cached, [], kv_in_place)
            bars.timings.update({f"weights.{part}": seconds for part, seconds in weights.seconds.items()})
            bars.step("checking graphs")
            for graph in traced:
                _check(tmp / f"{graph}.onnx")
            side = _copy_side_files(ckpt.path, tmp)
            required = [f"{g}.onnx" for g in traced] + [WEIGHTS_FILE]
            known = {WEIGHTS_FILE: weights.sha256}  # hashed as it was written
            on_bytes = bars.bytes_bar("sha256", sum((tmp / f).stat().st_size for f in required + side if f not in known))
            files = {"files": file_records(tmp, required, on_bytes, known), "side_files": file_records(tmp, side, on_bytes)}
            manifest = _manifest(tmp, ckpt, model, dtype, target, graphs, files, scheme)
            write_manifest(dataclasses.replace(manifest, kv_cache="in_place" if kv_in_place else "concat"))
    finally:
        if background is not None:
            background.cancel()
        if ahead is not None:
            ahead.stop()
        if bars is not None:
            bars.close()
            if timings is not None:
                timings.update(bars.timings)
    return out


class _CachedGraphs:
    """The finished graphs the trace cache has for this export (exporter/trace_cache.py), and where to
    keep the others once traced; `missing`: the graphs still to trace."""

    def __init__(self, model, dtype: str, traced: tuple[str, ...], target: str, scheme, enabled: bool, kv_in_place: bool = False):
        root = default_root() if enabled else None
        self.cache = None if root is None else TraceCache(root)
        self.keys = {g: self.cache.key(model, dtype, g, target, scheme, kv_in_place) for g in traced} if self.cache else {}
        self.found, self.seconds = {}, {}
        for graph, key in self.keys.items():
            clock = time.perf_counter()
            hit = self.cache.load(key)
            if hit is not None:
                self.found[graph], self.seconds[graph] = hit, time.perf_counter() - clock
        self.missing = [g for g in traced if g not in self.found]

    def keep(self, graph: str, ir_model, specs: dict) -> None:
        if self.cache is not None:
            self.cache.store(self.keys[graph], ir_model, specs)


class _Mispredicted(RuntimeError):
    """A weight streamed before the trace (`predicted_specs`) that the traced graph does not read."""


def _predicted(model, traced: tuple[str, ...], target: str, scheme) -> list:
    """The weights streamed before the graph is traced: the onnxruntime float32 step graph's (not
    quantized) Linear and Embedding weights (`weight_spec.predicted_specs`); none for other exports."""
    from nemotron_deploy.exporter.weight_spec import predicted_specs

    if traced != (STEP,) or target != "onnxruntime" or scheme is not None:
        return []
    return predicted_specs(model, "float32", min_bytes=_INLINE_MAX)


def _graphs_with_weights(
    ckpt, model, traced: tuple[str, ...], target: str, scheme, tmp: Path, bars, background, ahead, cached, predicted, kv_in_place=False
):
    """Each graph taken from the trace cache, or traced (here, or in the second process) and kept there,
    its weights streamed into weights.data (`WeightsFile`, closed: its SHA-256 known), saved as <graph>.onnx;
    returns ({graph kind: record}, the weights file). `ahead` (ReadAhead) stops when the first weight is streamed.
    predicted: specs streamed first, while `background` traces (their order in weights.data is the same
    whether it does or not); raises _Mispredicted if a graph does not read one of them."""
    from nemotron_deploy.exporter.weight_stream import WeightsFile

    weights, graphs, read = WeightsFile(tmp / WEIGHTS_FILE, ckpt), {}, set()
    try:
        if predicted:
            ahead.stop()  # the stream reads from here on
            sizes = {spec: model.get_parameter(spec.param).numel() * 4 for spec in predicted}  # float32
            bars.writing(traced[0], total=sum(sizes.values()))
            for spec in predicted:
                weights.add(spec)
                bars.wrote(spec.param, sizes[spec])
        for graph in traced:
            if graph in cached.found:
                bars.step(f"{graph}: from the trace cache")
                ir_model, specs = cached.found.pop(graph)
                bars.timings[f"{graph}.trace"] = cached.seconds[graph]
            elif background is not None and graph == background.graph:
                bars.step(f"{graph}: waiting for its trace in a second process")
                ir_model, specs, seconds = background.result()
                bars.timings[f"{graph}.trace"] = seconds
            else:
                ir_model, specs = finished_graph(
                    ckpt,
                    model,
                    graph,
                    target,
                    on_layer=bars.tracing(graph),
                    quantize=scheme,
                    on_phase=lambda phase, graph=graph: bars.step(f"{graph}: {phase}"),
                    kv_in_place=kv_in_place,
                )
            if graph in cached.missing:
                cached.keep(graph, ir_model, specs)  # before its weights are bound: the entry holds none
            ahead.stop()  # the stream reads from here on, and needs every core
            read.update(specs.values())
            proto = _bind_weights(ir_model, specs, graph, target, weights, bars)
            _save_onnx(proto, tmp / f"{graph}.onnx")
            record = _graph_record(model, graph, _plugin_records(proto) if target == "tensorrt" else None, target)
            graphs.update({kind: record for kind in (GRAPHS if graph == STEP else (graph,))})
            del proto, ir_model
    finally:
        weights.close()  # also after a failure: no thread left writing into the staging folder
    unread = [spec.param for spec in predicted if spec not in read]
    if unread:
        raise _Mispredicted(f"the traced graph does not read {len(unread)} weight(s) as predicted ({', '.join(unread[:3])})")
    return graphs, weights


def traced_graphs(target: str, model_dtype: str) -> tuple[str, ...]:
    """The graphs an export traces. onnxruntime, float32 (quantized or not): one `step` graph that serves
    prefill and decode, so one onnxruntime session holds each weight once (docs/export.md). Otherwise
    prefill and decode: TensorRT builds an engine per graph (an optimization profile each), and onnxruntime's
    float16 decode gathers its experts (its float16 MoE node is ~10x slower at one token)."""
    return (STEP,) if target == "onnxruntime" and model_dtype == "float32" else GRAPHS


def _check_kv_in_place(kv_in_place: bool, target: str, dtype: str, cfg) -> None:
    """`--kv-in-place` only where the export is one onnxruntime step graph (`traced_graphs`) and the
    attention is one onnxruntime's GroupQueryAttention computes (its CPU kernel: head_dim a multiple of 8)."""
    if not kv_in_place:
        return
    if target != "onnxruntime" or dtype != "float32":
        raise NemotronDeployError(
            f"--kv-in-place with --target {target} --dtype {dtype}: K/V appended in place is onnxruntime's "
            "GroupQueryAttention in the float32 (or quantized) step graph; export --target onnxruntime --dtype float32"
        )
    if cfg.layers_of("attention") and cfg.head_dim % 8:
        raise NemotronDeployError(
            f"--kv-in-place: config.json's head_dim is {cfg.head_dim}; onnxruntime's GroupQueryAttention takes a head_dim "
            "that is a multiple of 8 (every released NemotronH has 128); export without --kv-in-place"
        )


def _quant_scheme(quantize: str | None, block_size: int | None, target: str, dtype: str):
    """`--quantize` / `--block-size` -> QuantScheme or None, or a one-line error."""
    from nemotron_deploy.exporter.quantize import QuantScheme

    if quantize is None:
        if block_size is not None:
            raise NemotronDeployError(
                f"--block-size {block_size} without --quantize: it sets the quantization block; add --quantize int8|int4"
            )
        return None
    if target != "onnxruntime":
        raise NemotronDeployError(
            f"--quantize {quantize} with --target {target}: integer weights are onnxruntime kernels (MatMulNBits, QMoE); "
            "export --target onnxruntime to quantize"
        )
    if dtype != "float32":
        raise NemotronDeployError(
            f"--quantize {quantize} with --dtype {dtype}: quantized artifacts compute in float32; use --dtype float32"
        )
    try:
        return QuantScheme.parse(quantize, block_size)
    except ValueError as e:
        raise NemotronDeployError(str(e)) from None


def _check_quantizable(ckpt, model_dtype: str, scheme) -> None:
    """Every quantized layer's width divisible by the block (before any heavy work)."""
    from nemotron_deploy.exporter.quantize import QuantizeError, check_widths

    try:
        check_widths(meta_model(ckpt, model_dtype), scheme)
    except QuantizeError as e:
        raise NemotronDeployError(f"{ckpt.path}: {e}") from None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _nbytes(value) -> int:
    return value.dtype.itemsize * math.prod(value.shape.numpy())


def _bind_weights(ir_model, specs: dict, graph: str, target: str, weights, bars):
    """Every weight streamed into `weights` (or inlined if tiny) -> ModelProto whose initializers
    point into weights.data."""
    import onnx_ir as ir

    sizes = {name: _nbytes(ir_model.graph.initializers[name]) for name in specs}
    bars.writing(graph, total=sum(n for name, n in sizes.items() if not weights.has(specs[name])))
    for name, spec in specs.items():
        value, nbytes = ir_model.graph.initializers[name], sizes[name]
        seen = weights.has(spec)
        if nbytes <= _INLINE_MAX:
            from torch.onnx._internal.exporter._core import TorchTensor

            # in the initializer's declared shape: a spec's layout can pack the same bytes in more axes
            # (QMoE's flat rows are MatMulNBits' (blocks, bytes) ones: exporter/quantize.py)
            value.const_value = TorchTensor(weights.materialize(spec).reshape(tuple(value.shape.numpy())), name=name)
        else:
            offset, length = weights.add(spec)
            value.const_value = ir.ExternalTensor(
                WEIGHTS_FILE, offset, length, value.dtype, shape=value.shape, name=name, base_dir=weights.path.parent
            )
        bars.wrote(name, nbytes if not seen else 0)
    proto = ir.serde.serialize_model(ir_model)
    if target == "tensorrt":
        proto = _finish_plugin_graph(proto)
    return proto


def _finish_plugin_graph(proto):
    """onnx-graphsurgeon pass over a tensorrt-target graph: every plugin node carries exactly its contract's
    attributes plus `plugin_version` / `plugin_namespace`; local functions are dropped, so that TensorRT
    (10.7 - 10.14 would prefer a same-name function, 10.15+ a namespaced plugin) always takes the plugin."""
    import onnx_graphsurgeon as gs

    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # not its notes on bfloat16 or colours
    graph = gs.import_onnx(proto)
    for node in graph.nodes:
        op = CONTRACTS.get(node.op)
        if op is None or node.domain != op.namespace:
            continue
        want = {a.name for a in op.attributes} | {"plugin_version", "plugin_namespace"}
        if set(node.attrs) != want or len(node.inputs) != len(op.inputs) or len(node.outputs) != len(op.outputs):
            raise RuntimeError(f"{node.name}: {node.op} node does not follow its contract (attributes {sorted(node.attrs)})")
        node.attrs["plugin_version"], node.attrs["plugin_namespace"] = op.version, op.namespace
    graph.cleanup().toposort()
    finished = gs.export_onnx(graph, do_type_check=False)
    del finished.functions[:]
    finished.graph.name = proto.graph.name
    return finished


def _plugin_records(proto) -> tuple[PluginRecord, ...]:
    """A graph's entry in the manifest's `plugins`: each plugin it uses, with its node count."""
    import collections

    counts = collections.Counter(
        n.op_type for n in proto.graph.node if n.op_type in CONTRACTS and n.domain == CONTRACTS[n.op_type].namespace
    )
    return tuple(PluginRecord(name, CONTRACTS[name].version, CONTRACTS[name].namespace, n) for name, n in sorted(counts.items()))


def _save_onnx(proto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path))


def _check(path: Path) -> None:
    """onnx.checker full check (includes strict shape inference), by path so external data resolves."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def _graph_record(model, graph: str, plugins: tuple[PluginRecord, ...] | None, target: str) -> GraphRecord:
    """The step contract of one graph: the io_spec table with the model's dtype, decode's T = 1, and
    the SSM state's layout (`io_spec.ssm_kernel_layout`)."""
    dtype = str(model.dtype).removeprefix("torch.")

    def resolved(spec):
        shape = tuple(1 if (d == "new_tokens" and graph == "decode") else d for d in spec.shape)
        return dataclasses.replace(spec, dtype=dtype if spec.dtype == "model" else spec.dtype, shape=shape)

    layout = dict(ssm_kernel_layout=io_spec.ssm_kernel_layout(target, graph))
    inputs, outputs = io_spec.step_inputs(model.cfg, **layout), io_spec.step_outputs(model.cfg, **layout)
    new_tokens = 1 if graph == "decode" else "dynamic"  # a step graph serves decode with any T
    return GraphRecord(f"{graph}.onnx", new_tokens, tuple(map(resolved, inputs)), tuple(map(resolved, outputs)), plugins)


def _merge_plugins(graphs: dict[str, GraphRecord]) -> tuple[PluginRecord, ...]:
    merged = {}
    for record in graphs.values():
        for p in record.plugins or ():
            merged.setdefault(p.name, dataclasses.replace(p, nodes=None))
    return tuple(merged.values())


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _generation_defaults(ckpt_dir: Path, cfg) -> GenerationRecord:
    gen = {"eos_token_ids": tuple(cfg.eos_token_id), "bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id}
    path = ckpt_dir / "generation_config.json"
    if path.is_file():
        raw = read_json_object(path)
        eos = raw.get("eos_token_id")
        if eos is not None:
            gen["eos_token_ids"] = tuple(eos if isinstance(eos, list) else [eos])
        for key in ("temperature", "top_k", "top_p", "do_sample", "max_new_tokens"):
            if raw.get(key) is not None:
                gen[key] = raw[key]
    return GenerationRecord(**gen)


def _manifest(path: Path, ckpt, model, dtype: str, target: str, graphs: dict, files: dict, scheme) -> Manifest:
    """files: {"files": required file records, "side_files": the checkpoint's tokenizer / generation
    files that were copied}."""
    import onnx
    import torch

    from nemotron_deploy import exporter
    from nemotron_deploy.exporter.quantize import decode_weight_bytes

    cfg = ckpt.config
    model_dtype = str(model.dtype).removeprefix("torch.")
    layout = any(io_spec.ssm_kernel_layout(target, g) for g in traced_graphs(target, model_dtype))  # one graph, or none of them
    states = tuple(
        StateRecord(past.name, present.name, past.role, past.layer, model_dtype if past.dtype == "model" else past.dtype, past.shape)
        for past, present in zip(
            io_spec.state_specs(cfg, "past", ssm_kernel_layout=layout), io_spec.state_specs(cfg, "present", "total_len", layout)
        )
    )
    model_record = ModelRecord(
        tuple(cfg.layer_types),
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.max_position_embeddings,
        cfg.chunk_size,
        num_parameters=sum(p.numel() for p in model.parameters()),
        decode_weight_bytes=decode_weight_bytes(model, scheme),
        config=cfg.to_dict(),
    )
    side_names = [f.name for f in files["side_files"]]
    return Manifest(
        path=path,
        target=target,
        dtype=dtype,
        opset=opset(target),
        model=model_record,
        quantization=None if scheme is None else scheme.to_json(),
        # the oldest runtime that has every op the graphs use (RMSNormalization at opset 23,
        # CausalConvWithState, MoE / QMoE with their current inputs): what CI tests
        requires={"onnxruntime": ONNXRUNTIME_MIN} if target == "onnxruntime" else {},
        graphs=graphs,
        plugins=_merge_plugins(graphs),
        states=states,
        generation=_generation_defaults(ckpt.path, cfg),
        tokenizer={"file": "tokenizer.json"} if "tokenizer.json" in side_names else None,
        side_files=files["side_files"],
        files=files["files"],
        exporter={
            "source": str(ckpt.path),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "nemotron_deploy": getattr(exporter, "__version__", "0.1.0"),
        },
    )
