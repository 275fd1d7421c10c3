"""Checkpoint -> artifact directory: prefill and decode step graphs as ONNX, weights stored once, manifest.

    checkpoint ──load_model──> NemotronHStepModel ──torch.onnx.export(dynamo)──> prefill.onnx ─┐
                                                  └─────────────────────────────> decode.onnx ─┼─> weights.data (shared)
                                                                                               └─> manifest.json (last)

Everything is written into a hidden temporary directory next to the output and renamed into place
only when complete, so an interrupted export leaves nothing that looks like an artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.checkpoint import load_model, open_checkpoint
from nemotron_deploy.runtime.errors import NemotronDeployError, read_json_object
from nemotron_deploy.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE

log = logging.getLogger(__name__)

OPSET = 18
WEIGHTS_FILE = "weights.data"
# onnxruntime: standard ops, run by onnxruntime. tensorrt: Mamba2 core and MoE dispatch as plugin nodes
# (docs/plugins.md). tensorrt-rtx: standard ops only, for TensorRT for RTX (no plugin layer there).
TARGETS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
# tokenizer / generation files copied from the checkpoint when present
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja")
_ALIGN = 64  # byte alignment of each tensor in weights.data (lets runtimes map it without copies)
_INLINE_MAX = 1024  # tensors up to this many bytes stay inside the .onnx


def export_artifact(checkpoint_dir: str | Path, out_dir: str | Path, target: str = "onnxruntime", dtype: str = "float32", progress: bool = True) -> Path:
    """Export `checkpoint_dir` to a new artifact directory `out_dir`; returns its path.

    dtype: the graphs' compute dtype (weights, activations, conv and K/V states); the SSM state keeps
    the config's mamba_ssm_cache_dtype (fp32) and logits are fp32.
    """
    from tqdm.auto import tqdm

    if target not in TARGETS:
        raise NemotronDeployError(f"--target {target!r}: expected one of {TARGETS}")
    if target == "onnxruntime" and dtype == "bfloat16":
        raise NemotronDeployError(
            "--dtype bfloat16 with --target onnxruntime: onnxruntime's CPU provider has no bfloat16 kernels "
            "(and opset-18 Einsum/Conv have no bfloat16 type); use float16 or float32 for onnxruntime"
        )
    out = Path(out_dir)
    if out.exists():
        raise NemotronDeployError(f"{out}: already exists; choose a new output directory (nothing was overwritten)")
    ckpt = open_checkpoint(checkpoint_dir)
    steps = tqdm(total=5, desc="export", unit="step", disable=not progress)
    steps.set_postfix_str("loading weights")
    model = load_model(checkpoint_dir, dtype)
    steps.update()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        weights = _SharedWeights(tmp / WEIGHTS_FILE)
        graphs = {}
        for graph in ("prefill", "decode"):
            steps.set_postfix_str(f"tracing {graph} graph")
            proto = _export_graph(model, graph, target)
            weights.externalize(proto)
            _save_onnx(proto, tmp / f"{graph}.onnx")
            graphs[graph] = _graph_record(model, graph)
            if target == "tensorrt":
                graphs[graph]["plugins"] = _plugin_records(proto)
            del proto
            steps.update()
        weights.close()
        steps.set_postfix_str("checking graphs")
        for graph in graphs:
            _check(tmp / f"{graph}.onnx")
        steps.update()
        side = _copy_side_files(ckpt.path, tmp)
        manifest = _manifest(ckpt, model, dtype, target, graphs, side, tmp)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private
        os.replace(tmp, out)
        steps.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _example_inputs(model, graph: str):
    """Tracing inputs: batch 2, past 3, and for prefill 2 chunks + 3 tokens (several chunks, not a
    multiple of chunk_size), so no dimension is specialised to 0, 1 or a chunk multiple."""
    import torch

    cfg = model.cfg
    batch, past = 2, 3
    new = 1 if graph == "decode" else 2 * cfg.chunk_size + 3
    state = model.initial_state(batch)
    for spec in io_spec.state_specs(cfg, "past"):
        if spec.role in ("key", "value"):
            shape = list(state[spec.name].shape)
            shape[2] = past
            state[spec.name] = torch.zeros(shape, dtype=state[spec.name].dtype)
    ids = torch.zeros(batch, new, dtype=torch.int64)
    mask = torch.ones(batch, past + new, dtype=torch.int64)
    return (ids, mask, *(state[s.name] for s in io_spec.state_specs(cfg, "past")))


def _export_graph(model, graph: str, target: str = "onnxruntime"):
    """torch.onnx (dynamo) export of one step graph -> ModelProto with weights inline."""
    import torch

    from nemotron_deploy.exporter.plugin_nodes import export_target

    cfg = model.cfg
    dyn = torch.export.Dim.DYNAMIC
    states = tuple({0: dyn, 2: dyn} if s.role in ("key", "value") else {0: dyn} for s in io_spec.state_specs(cfg, "past"))
    ids_dims = {0: dyn} if graph == "decode" else {0: dyn, 1: dyn}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision not installed"
    try:
        with warnings.catch_warnings(), export_target(target):
            warnings.simplefilter("ignore")  # deprecation chatter from torch's own pytree / exporter internals
            program = torch.onnx.export(
                model, _example_inputs(model, graph), dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
                input_names=[s.name for s in io_spec.step_inputs(cfg)],
                output_names=[s.name for s in io_spec.step_outputs(cfg)],
                dynamic_shapes=(ids_dims, {0: dyn, 1: dyn}, states),
            )  # fmt: skip
    except Exception as e:  # an exporter failure is a bug of ours, but say which graph
        raise RuntimeError(f"torch.onnx.export of the {graph} graph failed: {e}") from e
    _fold_weight_transposes(program.model)
    proto = program.model_proto
    if target == "tensorrt":
        proto = _finish_plugin_graph(proto)
    proto.graph.name = f"nemotron_h_{graph}"
    for node in proto.graph.node:  # per-node Python stack traces: large and of no use to a runtime
        del node.metadata_props[:]
        node.doc_string = ""
    return proto


def _finish_plugin_graph(proto):
    """onnx-graphsurgeon pass over a tensorrt-target graph: every plugin node carries exactly its contract's
    attributes plus `plugin_version` / `plugin_namespace`; local functions are dropped, so that TensorRT
    (10.7 - 10.14 would prefer a same-name function, 10.15+ a namespaced plugin) always takes the plugin."""
    import onnx_graphsurgeon as gs

    from nemotron_deploy.exporter.plugin_ops import PLUGIN_OPS

    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # not its notes on bfloat16 or colours
    graph = gs.import_onnx(proto)
    for node in graph.nodes:
        op = PLUGIN_OPS.get(node.op)
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


def _plugin_records(proto) -> list[dict]:
    """A graph's entry in the manifest's `plugins`: each plugin it uses, with its node count."""
    import collections

    from nemotron_deploy.exporter.plugin_ops import PLUGIN_OPS

    counts = collections.Counter(n.op_type for n in proto.graph.node if n.op_type in PLUGIN_OPS and n.domain == PLUGIN_OPS[n.op_type].namespace)
    return [{"name": name, "version": PLUGIN_OPS[name].version, "namespace": PLUGIN_OPS[name].namespace, "nodes": n}
            for name, n in sorted(counts.items())]  # fmt: skip


def _fold_weight_transposes(model) -> None:
    """Store Linear weights pre-transposed, so runtimes read them as MatMul wants them.

    We skip onnxscript's general optimizer (its rewrite rules take tens of minutes on the unrolled
    MoE loops of a real model) and fold only Transposes of initializers, whatever their size: left
    to onnxruntime, each session would fold its own copy of every weight at load time.
    """
    from onnxscript.optimizer import fold_constants

    # True forces folding past the size limits; None leaves other nodes to the default (small) rules
    fold_constants(model, should_fold=lambda node: True if node.op_type == "Transpose" else None)
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)


class _SharedWeights:
    """Appends initializers to one data file, each distinct content once, and points the graph at it."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.offsets: dict[bytes, tuple[int, int]] = {}

    def externalize(self, proto) -> None:
        from onnx import TensorProto, numpy_helper

        for tensor in proto.graph.initializer:
            data = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            if len(data) <= _INLINE_MAX:
                continue
            key = hashlib.sha256(data).digest()
            if key not in self.offsets:
                pad = -self.file.tell() % _ALIGN
                self.file.write(b"\0" * pad)
                self.offsets[key] = (self.file.tell(), len(data))
                self.file.write(data)
            offset, length = self.offsets[key]
            tensor.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(field)
            del tensor.external_data[:]
            for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
            tensor.data_location = TensorProto.EXTERNAL

    def close(self) -> None:
        self.file.close()


def _save_onnx(proto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path))


def _check(path: Path) -> None:
    """onnx.checker full check (includes strict shape inference), by path so external data resolves."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def _graph_record(model, graph: str) -> dict:
    cfg = model.cfg
    resolve = {"model": str(model.dtype).removeprefix("torch.")}

    def specs(items):
        return [
            {"name": s.name, "role": s.role, "dtype": resolve.get(s.dtype, s.dtype), "layer": s.layer,
             "shape": [1 if (d == "new_tokens" and graph == "decode") else d for d in s.shape]}
            for s in items
        ]  # fmt: skip

    return {
        "file": f"{graph}.onnx",
        "new_tokens": 1 if graph == "decode" else "dynamic",
        "inputs": specs(io_spec.step_inputs(cfg)),
        "outputs": specs(io_spec.step_outputs(cfg)),
    }


def _merge_plugins(graphs: dict) -> list[dict]:
    merged = {}
    for record in graphs.values():
        for p in record.get("plugins", []):
            merged.setdefault(p["name"], {k: p[k] for k in ("name", "version", "namespace")})
    return list(merged.values())


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _generation_defaults(ckpt_dir: Path, cfg) -> dict:
    gen = {"eos_token_ids": list(cfg.eos_token_id), "bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id}
    path = ckpt_dir / "generation_config.json"
    if path.is_file():
        raw = read_json_object(path)
        eos = raw.get("eos_token_id")
        if eos is not None:
            gen["eos_token_ids"] = eos if isinstance(eos, list) else [eos]
        for key in ("temperature", "top_k", "top_p", "do_sample", "max_new_tokens"):
            if raw.get(key) is not None:
                gen[key] = raw[key]
    return gen


def _manifest(ckpt, model, dtype: str, target: str, graphs: dict, side_files: list[str], tmp: Path) -> dict:
    import onnx
    import torch

    from nemotron_deploy import exporter

    cfg = ckpt.config
    model_dtype = str(model.dtype).removeprefix("torch.")
    states = []
    for past, present in zip(io_spec.state_specs(cfg, "past"), io_spec.state_specs(cfg, "present", "total_len")):
        states.append({"name": past.name, "present": present.name, "role": past.role, "layer": past.layer,
                       "dtype": model_dtype if past.dtype == "model" else past.dtype, "shape": list(past.shape)})  # fmt: skip
    files = [f"{g}.onnx" for g in graphs] + [WEIGHTS_FILE]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "target": target,
        "dtype": dtype,
        "opset": OPSET,
        "model": {
            "layer_types": list(cfg.layer_types),
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "chunk_size": cfg.chunk_size,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "config": cfg.to_dict(),
        },
        "graphs": graphs,
        # plugin libraries an engine of this artifact needs (tensorrt target); `build` checks them
        "plugins": _merge_plugins(graphs),
        "states": states,
        "generation": _generation_defaults(ckpt.path, cfg),
        "tokenizer": {"file": "tokenizer.json"} if "tokenizer.json" in side_files else None,
        "side_files": side_files,
        "files": [{"name": f, "bytes": (tmp / f).stat().st_size} for f in files],
        "exporter": {
            "source": str(ckpt.path),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "nemotron_deploy": getattr(exporter, "__version__", "0.1.0"),
        },
    }
