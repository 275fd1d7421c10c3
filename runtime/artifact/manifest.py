"""The artifact manifest: what an exported directory holds, read by every runtime.

An artifact directory holds `manifest.json` (written last: an export that did not finish has none),
one `.onnx` per step graph (`prefill`: T >= 1 new tokens, `decode`: T = 1), `weights.data` (the
weights of both graphs, stored once), and the checkpoint's tokenizer and generation config if any.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_deploy.runtime.artifact.dtypes import FLOAT_DTYPES, numpy_dtype
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError, read_json_object

FORMAT = "nemotron-deploy-artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPHS = ("prefill", "decode")  # the step graphs of every artifact
KV_ROLES = ("key", "value")  # the states that grow by one position per token
WEIGHTS_FILE = "weights.data"  # the weights of both graphs, stored once (ONNX external data)


class ArtifactError(NemotronDeployError):
    """An artifact directory is missing files, corrupted, or of another format version."""


# ------------------------------------------------------------------------------------------ the schema
# Field order is the JSON's key order. A field marked OPTIONAL is left out of the JSON when None.
OPTIONAL = {"optional": True}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a step graph (exporter/io_spec.py makes them; dtype "model" until export)."""

    name: str
    role: str  # input_ids | attention_mask | logits | conv_state | ssm_state | key | value
    dtype: str
    shape: tuple[str | int, ...]  # sizes and symbols: batch, new_tokens, past_len, total_len
    layer: int | None = None


@dataclass(frozen=True)
class StateRecord:
    """A recurrent state: `name` (past.*) is a graph input, `present` (present.*) the output that replaces it."""

    name: str
    present: str
    role: str  # conv_state | ssm_state | key | value
    layer: int
    dtype: str
    shape: tuple[str | int, ...]  # [batch, ...]; K/V: [batch, kv_heads, past_len, head_dim]

    @property
    def grows(self) -> bool:
        """K/V: one position per token along axis 2; the Mamba states have a fixed size."""
        return self.role in KV_ROLES


@dataclass(frozen=True)
class PluginRecord:
    name: str
    version: str
    namespace: str
    nodes: int | None = field(default=None, metadata=OPTIONAL)  # per graph; None in the artifact's list


@dataclass(frozen=True)
class GraphRecord:
    file: str
    new_tokens: int | str  # 1 (decode) or "dynamic"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    plugins: tuple[PluginRecord, ...] | None = field(default=None, metadata=OPTIONAL)  # tensorrt target


@dataclass(frozen=True)
class ModelRecord:
    layer_types: tuple[str, ...]
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    chunk_size: int | None
    num_parameters: int
    decode_weight_bytes: int | None  # weight bytes a decode step reads per sequence (the bandwidth floor)
    config: dict[str, Any]  # ModelConfig.to_dict()


@dataclass(frozen=True)
class GenerationRecord:
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    temperature: float | None = field(default=None, metadata=OPTIONAL)  # the checkpoint's generation_config.json
    top_k: int | None = field(default=None, metadata=OPTIONAL)
    top_p: float | None = field(default=None, metadata=OPTIONAL)
    do_sample: bool | None = field(default=None, metadata=OPTIONAL)
    max_new_tokens: int | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class FileRecord:
    name: str
    bytes: int
    sha256: str | None = None


@dataclass(frozen=True)
class PlanRecord:
    file: str
    bytes: int
    profile: dict[str, list]  # input name -> [min, opt, max] shapes


@dataclass(frozen=True)
class EngineRecord:
    """What `nemotron-deploy build` made for one engine kind (tensorrt | tensorrt-rtx)."""

    version: str  # TensorRT's: a plan runs only on the version that built it
    precision: str
    compute_capability: str  # "native" or the GPU it was built for ahead of time
    built_on: str | None  # the building machine's GPU, for native builds
    max_batch: int
    max_seq_len: int
    max_new_tokens: int
    plugins: dict[str, Any] | None  # {"library": path, "plugins": [...]} for tensorrt-target artifacts
    graphs: dict[str, PlanRecord]


@dataclass(frozen=True)
class Manifest:
    """An artifact directory's manifest.json, typed. `read_manifest` is its one reader, `write_manifest`
    its one writer."""

    path: Path = field(metadata={"json": False})  # the artifact directory
    target: str = "onnxruntime"
    dtype: str = "float32"
    opset: int | None = None
    model: ModelRecord | None = None
    quantization: dict[str, Any] | None = None  # QuantScheme.to_json() of `export --quantize`
    # the oldest runtime that has every op the graphs use
    requires: dict[str, str] = field(default_factory=dict)
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    plugins: tuple[PluginRecord, ...] = ()  # what an engine of this artifact needs (tensorrt target)
    states: tuple[StateRecord, ...] = ()
    generation: GenerationRecord = GenerationRecord()
    tokenizer: dict[str, str] | None = None  # {"file": "tokenizer.json"}
    side_files: tuple[FileRecord, ...] = ()  # optional: a runtime works without them (token ids only)
    files: tuple[FileRecord, ...] = ()  # required, checked by size at load and by SHA-256 with `verify`
    exporter: dict[str, Any] = field(default_factory=dict)  # versions and source, for people
    engines: dict[str, EngineRecord] = field(default_factory=dict, metadata=OPTIONAL)

    def graph(self, name: str) -> GraphRecord:
        return self.graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.path / self.graphs[name].file

    @property
    def tokenizer_file(self) -> Path | None:
        name = (self.tokenizer or {}).get("file")
        return self.path / name if name else None


def read_manifest(artifact_dir: str | Path) -> Manifest:
    """Read and check `manifest.json` and the files it lists (presence and sizes)."""
    path = Path(artifact_dir)
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a directory (expected an artifact directory written by 'nemotron-deploy export')")
    if not file.is_file():
        raise ArtifactError(f"{file}: missing (not an artifact directory, or its export did not finish)")
    raw = read_json_object(file, ArtifactError)
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{file}: field 'format' is {raw.get('format')!r}, expected {FORMAT!r}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: format_version {raw.get('format_version')!r}, this nemotron-deploy reads version {FORMAT_VERSION}; re-export the checkpoint"
        )
    _validate(raw, file)
    manifest = from_json(path, raw)
    for entry in manifest.files:
        f = path / entry.name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in {MANIFEST_FILE})")
        if f.stat().st_size != entry.bytes:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, {MANIFEST_FILE} records {entry.bytes} (truncated or replaced)")
    return manifest


def write_manifest(manifest: Manifest) -> Path:
    """Write (or replace) `manifest.json` in the artifact directory, atomically."""
    from nemotron_deploy.runtime.artifact.atomic import write_file

    return write_file(manifest.path / MANIFEST_FILE, json.dumps(to_json(manifest), indent=2).encode())


def to_json(record) -> Any:
    """A record as JSON values: the format fields first, then the fields in order (OPTIONAL ones only when set)."""
    if isinstance(record, Manifest):
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **_fields_json(record)}
    if dataclasses.is_dataclass(record):
        return _fields_json(record)
    if isinstance(record, (list, tuple)):
        return [to_json(item) for item in record]
    if isinstance(record, dict):
        return {key: to_json(value) for key, value in record.items()}
    return record


def _fields_json(record) -> dict:
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.metadata.get("json", True) and not (f.metadata.get("optional") and (value is None or value == {})):
            out[f.name] = to_json(value)
    return out


def from_json(path: Path, raw: dict) -> Manifest:
    """The records of a manifest that `_validate` accepted."""
    files = lambda key: tuple(_record(FileRecord, entry) for entry in raw.get(key) or [] if isinstance(entry, dict))  # noqa: E731
    return Manifest(
        path=path,
        target=raw["target"],
        dtype=raw["dtype"],
        opset=raw.get("opset"),
        model=_record(ModelRecord, raw["model"], layer_types=tuple(raw["model"]["layer_types"])),
        quantization=raw.get("quantization"),
        requires=raw.get("requires") or {},
        graphs={name: _graph(graph) for name, graph in raw["graphs"].items()},
        plugins=tuple(_record(PluginRecord, p) for p in raw.get("plugins") or []),
        states=tuple(_record(StateRecord, s, shape=tuple(s["shape"])) for s in raw["states"]),
        generation=_record(
            GenerationRecord, raw.get("generation") or {}, eos_token_ids=tuple((raw.get("generation") or {}).get("eos_token_ids") or ())
        ),
        tokenizer=raw.get("tokenizer"),
        side_files=files("side_files"),
        files=files("files"),
        exporter=raw.get("exporter") or {},
        engines={kind: _engine(engine) for kind, engine in (raw.get("engines") or {}).items()},
    )


def _record(cls, raw: dict, **converted):
    """`cls` from the keys of `raw` it has fields for (missing ones take their defaults, or None)."""
    values = {f.name: raw.get(f.name) for f in dataclasses.fields(cls) if f.name in raw or f.default is dataclasses.MISSING}
    return cls(**(values | converted))


def _graph(raw: dict) -> GraphRecord:
    specs = lambda key: tuple(_record(TensorSpec, t, shape=tuple(t["shape"])) for t in raw[key])  # noqa: E731
    plugins = None if raw.get("plugins") is None else tuple(_record(PluginRecord, p) for p in raw["plugins"])
    return GraphRecord(
        file=raw["file"], new_tokens=raw.get("new_tokens"), inputs=specs("inputs"), outputs=specs("outputs"), plugins=plugins
    )


def _engine(raw: dict) -> EngineRecord:
    graphs = {name: _record(PlanRecord, plan) for name, plan in (raw.get("graphs") or {}).items()}
    return _record(EngineRecord, raw, graphs=graphs)


# ------------------------------------------------------------------------------------------ validation
# Every field a runtime reads, checked when an artifact is opened, so a damaged manifest is one line
# naming the field, never a KeyError or a numpy error deep inside a backend.
STATE_ROLES = ("conv_state", "ssm_state", "key", "value")


def _validate(raw: dict, file: Path) -> None:
    def fail(field: str, expected: str, value=...) -> None:
        got = "missing" if value is ... else json.dumps(value)[:60]
        raise ArtifactError(f"{file}: field '{field}' is {got}, expected {expected}")

    def get(obj: dict, key: str, field: str, kind, expected: str, optional: bool = False):
        if key not in obj:
            if optional:
                return None
            fail(field, expected)
        value = obj[key]
        if optional and value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            fail(field, expected, value)
        return value

    def positive(obj: dict, key: str, field: str) -> int:
        value = get(obj, key, field, int, "an integer >= 1")
        if value < 1:
            fail(field, "an integer >= 1", value)
        return value

    def one_of(obj: dict, key: str, field: str, choices) -> str:
        value = get(obj, key, field, str, f"one of {', '.join(choices)}")
        if value not in choices:
            fail(field, f"one of {', '.join(choices)}", value)
        return value

    def shape(obj: dict, field: str) -> list:
        dims = get(obj, "shape", f"{field}.shape", list, "a list of sizes (integers >= 0) and symbols")
        for i, d in enumerate(dims):
            if not ((isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d)):
                fail(f"{field}.shape[{i}]", "an integer >= 0 or a symbol such as 'batch'", d)
        return dims

    def objects(obj: dict, key: str, field: str, optional: bool = False):
        for i, item in enumerate(get(obj, key, field, list, "a list", optional) or []):
            if not isinstance(item, dict):
                fail(f"{field}[{i}]", "an object", item)
            yield f"{field}[{i}]", item

    one_of(raw, "target", "target", ("onnxruntime", "tensorrt", "tensorrt-rtx"))
    one_of(raw, "dtype", "dtype", FLOAT_DTYPES)
    model = get(raw, "model", "model", dict, "an object")
    for key in ("vocab_size", "hidden_size", "max_position_embeddings", "num_parameters"):
        positive(model, key, f"model.{key}")
    kinds = get(model, "layer_types", "model.layer_types", list, "a list of layer kinds")
    if not kinds or not all(k in ("mamba", "attention", "mlp", "moe") for k in kinds):
        fail("model.layer_types", "a non-empty list of mamba / attention / mlp / moe", kinds)
    get(model, "config", "model.config", dict, "an object")
    if model.get("decode_weight_bytes") is not None:
        positive(model, "decode_weight_bytes", "model.decode_weight_bytes")
    requires = get(raw, "requires", "requires", dict, "an object", optional=True) or {}
    get(requires, "onnxruntime", "requires.onnxruntime", str, "a version such as '1.32'", optional=True)
    quant = get(raw, "quantization", "quantization", dict, "an object or null", optional=True)
    if quant is not None:
        if get(quant, "bits", "quantization.bits", int, "4 or 8") not in (4, 8):
            fail("quantization.bits", "4 or 8", quant["bits"])
        positive(quant, "block_size", "quantization.block_size")
    graphs = get(raw, "graphs", "graphs", dict, "an object with 'prefill' and 'decode'")
    for name in GRAPHS:
        graph = get(graphs, name, f"graphs.{name}", dict, "an object")
        get(graph, "file", f"graphs.{name}.file", str, "a file name")
        for io in ("inputs", "outputs"):
            for where, spec in objects(graph, io, f"graphs.{name}.{io}"):
                get(spec, "name", f"{where}.name", str, "a tensor name")
                get(spec, "role", f"{where}.role", str, "a role such as 'input_ids'")  # backends bind by role
                get(spec, "dtype", f"{where}.dtype", str, "a dtype name")
                shape(spec, where)
    for where, state in objects(raw, "states", "states"):
        for key in ("name", "present"):
            get(state, key, f"{where}.{key}", str, "a tensor name")
        one_of(state, "role", f"{where}.role", STATE_ROLES)
        one_of(state, "dtype", f"{where}.dtype", FLOAT_DTYPES)
        if shape(state, where)[:1] != ["batch"]:
            fail(f"{where}.shape[0]", "'batch'", state["shape"][:1])
    generation = get(raw, "generation", "generation", dict, "an object", optional=True) or {}
    for i, t in enumerate(get(generation, "eos_token_ids", "generation.eos_token_ids", list, "a list of token ids", optional=True) or []):
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            fail(f"generation.eos_token_ids[{i}]", "a token id (an integer >= 0)", t)
    pad = get(generation, "pad_token_id", "generation.pad_token_id", int, "a token id or null", optional=True)
    if pad is not None and pad < 0:
        fail("generation.pad_token_id", "a token id (an integer >= 0) or null", pad)
    tokenizer = get(raw, "tokenizer", "tokenizer", dict, "an object or null", optional=True)
    if tokenizer is not None:
        get(tokenizer, "file", "tokenizer.file", str, "a file name")
    for where, plugin in objects(raw, "plugins", "plugins", optional=True):
        for key in ("name", "version", "namespace"):
            get(plugin, key, f"{where}.{key}", str, "a string")
    for where, entry in objects(raw, "files", "files"):
        name = get(entry, "name", f"{where}.name", str, "a file name")
        if Path(name).name != name or name in ("", ".", ".."):
            fail(f"{where}.name", "a file name inside the artifact directory", name)
        if get(entry, "bytes", f"{where}.bytes", int, "a size in bytes") < 0:
            fail(f"{where}.bytes", "a size in bytes (>= 0)", entry["bytes"])
        digest = get(entry, "sha256", f"{where}.sha256", str, "a SHA-256 hex digest", optional=True)
        if digest is not None and len(digest) != 64:
            fail(f"{where}.sha256", "a SHA-256 hex digest (64 characters)", digest)


def check_graph_inputs(manifest: Manifest, graph: str, inputs: dict[str, tuple[str, list]]) -> None:
    """The manifest's states against a graph's own declared inputs (name -> (dtype name, dims, symbols
    as strings)). Raises ArtifactError naming the state."""
    where = f"{manifest.path / MANIFEST_FILE}"
    file = manifest.graph(graph).file
    unlisted = sorted(set(inputs) - {s.name for s in manifest.states} - {"input_ids", "attention_mask"})
    if unlisted:
        raise ArtifactError(f"{where}: {file} takes state '{unlisted[0]}', which the manifest's 'states' do not list")
    for state in manifest.states:
        if state.name not in inputs:
            raise ArtifactError(f"{where}: state '{state.name}' is not an input of {file}")
        dtype, dims = inputs[state.name]
        if dtype != state.dtype:
            raise ArtifactError(f"{where}: state '{state.name}' has dtype {state.dtype}, {file} takes {dtype}")
        if len(dims) != len(state.shape) or any(isinstance(d, int) and state.shape[i] != d for i, d in enumerate(dims)):
            raise ArtifactError(f"{where}: state '{state.name}' has shape {list(state.shape)}, {file} takes {dims}")


def initial_state_shapes(manifest: Manifest, batch: int) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype name) of every state of `batch` new sequences (K/V with past length 0)."""
    return {s.name: ([batch if d == "batch" else 0 if isinstance(d, str) else d for d in s.shape], s.dtype) for s in manifest.states}


def zero_state(manifest: Manifest, batch: int) -> dict[str, np.ndarray]:
    """Zero states for `batch` new sequences, as numpy arrays."""
    return {name: np.zeros(shape, dtype=numpy_dtype(dtype)) for name, (shape, dtype) in initial_state_shapes(manifest, batch).items()}
