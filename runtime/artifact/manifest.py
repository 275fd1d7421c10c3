"""The artifact manifest: what an exported directory holds, read by every runtime.

An artifact directory holds `manifest.json` (written last: an export that did not finish has none),
one `.onnx` per step graph (`prefill`: T >= 1 new tokens, `decode`: T = 1), `weights.data` (the
weights of both graphs, stored once), and the checkpoint's tokenizer and generation config if any.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_deploy.runtime.artifact import schema
from nemotron_deploy.runtime.artifact.dtypes import FLOAT_DTYPES, numpy_dtype
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError, read_json_object
from nemotron_deploy.runtime.artifact.schema import JSON_TYPES, checked

FORMAT = "nemotron-deploy-artifact"
FORMAT_VERSION = 1
KV_CACHE_FORMS = ("concat", "in_place")  # Manifest.kv_cache
MANIFEST_FILE = "manifest.json"
GRAPHS = ("prefill", "decode")  # the step graphs of every artifact
KV_ROLES = ("key", "value")  # the states that grow by one position per token
WEIGHTS_FILE = "weights.data"  # the weights of both graphs, stored once (ONNX external data)


class ArtifactError(NemotronDeployError):
    """An artifact directory is missing files, corrupted, or of another format version."""


# ------------------------------------------------------------------------------------------ the schema
# Each field carries its JSON rule (schema.py): the reader checks a manifest against these rules before
# anything reads it, so a damaged manifest is one line naming the field, never a KeyError or a numpy
# error deep inside a backend. Field order is the JSON's key order; a field without a rule is not JSON.
# `cpp=True`: runtime/cpp/src/manifest.cpp checks it too, with the same message (tested).
TARGETS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
LAYER_KINDS = ("mamba", "attention", "mlp", "moe")
STATE_ROLES = ("conv_state", "ssm_state", "key", "value")


def _is_dim(d) -> bool:
    return (JSON_TYPES["integer"](d) and d >= 0) or (isinstance(d, str) and d != "")


def _shape(cpp: bool = False, **kw) -> schema.Rule:
    dim = schema.Rule(None, "an integer >= 0 or a symbol such as 'batch'", test=_is_dim, cpp=cpp)
    return schema.array("a list of sizes (integers >= 0) and symbols", items=dim, cpp=cpp, **kw)


def _positive(**kw) -> schema.Rule:
    return schema.integer("an integer >= 1", minimum=1, **kw)


def _token_id(**kw) -> schema.Rule:
    return schema.integer("a token id or null", minimum=0, refused="a token id (an integer >= 0) or null", optional=True, **kw)


def _file_name(test=None, **kw) -> schema.Rule:
    return schema.string("a file name", test=test, refused="a file name inside the artifact directory" if test else None, **kw)


def _inside_dir(name: str) -> bool:
    return Path(name).name == name and name not in ("", ".", "..")


def _size(**kw) -> schema.Rule:
    return schema.integer("a size in bytes", minimum=0, refused="a size in bytes (>= 0)", **kw)


NAME = schema.string("a tensor name", cpp=True)
STATE_SHAPE = _shape(test=lambda dims: dims[:1] == ["batch"], refused="'batch'", at="[0]", shown=lambda dims: dims[:1], cpp=True)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a step graph (exporter/io_spec.py makes them; dtype "model" until export)."""

    name: str = checked(NAME)
    role: str = checked(schema.string("a role such as 'input_ids'"))  # input_ids | attention_mask | logits | states' roles
    dtype: str = checked(schema.string("a dtype name"))
    shape: tuple[str | int, ...] = checked(_shape())  # sizes and symbols: batch, new_tokens, past_len, total_len
    layer: int | None = checked(schema.integer("a layer index or null", minimum=0, optional=True), default=None)


@dataclass(frozen=True)
class StateRecord:
    """A recurrent state: `name` (past.*) is a graph input, `present` (present.*) the output that replaces it."""

    name: str = checked(NAME)
    present: str = checked(NAME)
    role: str = checked(schema.one_of(STATE_ROLES, cpp=True))
    layer: int = checked(schema.integer("a layer index", minimum=0))
    dtype: str = checked(schema.one_of(FLOAT_DTYPES, cpp=True))
    shape: tuple[str | int, ...] = checked(STATE_SHAPE)  # [batch, ...]; K/V: [batch, kv_heads, past_len, head_dim]

    @property
    def grows(self) -> bool:
        """K/V: one position per token along axis 2; the Mamba states have a fixed size."""
        return self.role in KV_ROLES


@dataclass(frozen=True)
class PluginRecord:
    name: str = checked(schema.string("a string", cpp=True))
    version: str = checked(schema.string("a string", cpp=True))
    namespace: str = checked(schema.string("a string", cpp=True))
    # per graph; None in the artifact's list
    nodes: int | None = checked(schema.integer("a node count or null", minimum=0, optional=True), omit_none=True, default=None)


def _is_new_tokens(value) -> bool:
    return value == "dynamic" or (JSON_TYPES["integer"](value) and value == 1)


@dataclass(frozen=True)
class GraphRecord:
    file: str = checked(_file_name())
    new_tokens: int | str = checked(schema.Rule(None, "1 or 'dynamic'", test=_is_new_tokens))
    inputs: tuple[TensorSpec, ...] = checked(schema.objects(TensorSpec))
    outputs: tuple[TensorSpec, ...] = checked(schema.objects(TensorSpec))
    # tensorrt target
    plugins: tuple[PluginRecord, ...] | None = checked(schema.objects(PluginRecord, optional=True), omit_none=True, default=None)


@dataclass(frozen=True)
class ModelRecord:
    layer_types: tuple[str, ...] = checked(
        schema.array(
            "a list of layer kinds",
            test=lambda kinds: bool(kinds) and all(isinstance(k, str) and k in LAYER_KINDS for k in kinds),
            refused="a non-empty list of mamba / attention / mlp / moe",
            cpp=True,
        )
    )
    vocab_size: int = checked(_positive(cpp=True))
    hidden_size: int = checked(_positive())
    max_position_embeddings: int = checked(_positive(cpp=True))
    chunk_size: int | None = checked(schema.integer("an integer >= 1 or null", minimum=1, optional=True))
    num_parameters: int = checked(_positive())
    # weight bytes a decode step reads per sequence (the bandwidth floor)
    decode_weight_bytes: int | None = checked(_positive(optional=True))
    config: dict[str, Any] = checked(schema.obj("an object"))  # ModelConfig.to_dict()


def _optional(rule: schema.Rule) -> Any:
    """A generation_config.json value: left out of the JSON when the checkpoint has none."""
    return checked(dataclasses.replace(rule, optional=True), omit_none=True, default=None)


@dataclass(frozen=True)
class GenerationRecord:
    eos_token_ids: tuple[int, ...] = checked(
        schema.array(
            "a list of token ids", items=schema.integer("a token id (an integer >= 0)", minimum=0, cpp=True), optional=True, cpp=True
        ),
        default=(),
    )
    bos_token_id: int | None = checked(_token_id(), default=None)
    pad_token_id: int | None = checked(_token_id(cpp=True), default=None)
    # the checkpoint's generation_config.json
    temperature: float | None = _optional(schema.Rule("number", "a number >= 0 or null", test=lambda v: v >= 0))
    top_k: int | None = _optional(schema.integer("an integer >= 0 or null", minimum=0))
    top_p: float | None = _optional(schema.Rule("number", "a number from 0 to 1 or null", test=lambda v: 0 <= v <= 1))
    do_sample: bool | None = _optional(schema.Rule("boolean", "true, false or null"))
    max_new_tokens: int | None = _optional(schema.integer("an integer >= 1 or null", minimum=1))


@dataclass(frozen=True)
class FileRecord:
    name: str = checked(_file_name(test=_inside_dir, cpp=True))
    bytes: int = checked(_size(cpp=True))
    sha256: str | None = checked(
        schema.string("a SHA-256 hex digest", test=lambda d: len(d) == 64, refused="a SHA-256 hex digest (64 characters)", optional=True),
        default=None,
    )


@dataclass(frozen=True)
class PlanRecord:
    file: str = checked(_file_name(cpp=True))
    bytes: int = checked(_size())
    profile: dict[str, list] = checked(schema.obj("an object of input name -> [min, opt, max] shapes"))  # input name -> shapes


ENGINE_PLUGINS = {"library": schema.string("a library path", cpp=True), "plugins": schema.objects(PluginRecord)}


@dataclass(frozen=True)
class EngineRecord:
    """What `nemotron-deploy build` made for one engine kind (tensorrt | tensorrt-rtx)."""

    version: str = checked(schema.string("a TensorRT version", cpp=True))  # TensorRT's: a plan runs only on the version that built it
    precision: str = checked(schema.one_of(FLOAT_DTYPES))
    # "native" (also when missing) or the GPU it was built for ahead of time
    compute_capability: str = checked(schema.string("a compute capability", optional=True, cpp=True))
    built_on: str | None = checked(schema.string("a compute capability or null", optional=True, cpp=True))  # native builds' GPU
    max_batch: int = checked(_positive(cpp=True))
    max_seq_len: int = checked(_positive(cpp=True))
    max_new_tokens: int = checked(_positive(cpp=True))
    # {"library": path, "plugins": [...]} for tensorrt-target artifacts
    plugins: dict[str, Any] | None = checked(schema.obj("an object or null", ENGINE_PLUGINS, optional=True, cpp=True))
    graphs: dict[str, PlanRecord] = checked(
        schema.Rule("object", "an object with 'prefill' and 'decode'", values=schema.record(PlanRecord, cpp=True), keys=GRAPHS, cpp=True)
    )


@dataclass(frozen=True)
class Manifest:
    """An artifact directory's manifest.json, typed. `read_manifest` is its one reader, `write_manifest`
    its one writer."""

    path: Path  # the artifact directory (not in the JSON)
    target: str = checked(schema.one_of(TARGETS, cpp=True), default="onnxruntime")
    dtype: str = checked(schema.one_of(FLOAT_DTYPES, cpp=True), default="float32")
    opset: int | None = checked(schema.integer("an opset number or null", minimum=1, optional=True), default=None)
    model: ModelRecord | None = checked(schema.record(ModelRecord, cpp=True), default=None)
    # QuantScheme.to_json() of `export --quantize`
    quantization: dict[str, Any] | None = checked(
        schema.obj(
            "an object or null",
            {"bits": schema.Rule("integer", "4 or 8", test=lambda bits: bits in (4, 8)), "block_size": _positive()},
            optional=True,
        ),
        default=None,
    )
    # how the graphs keep the attention K/V cache: "concat", a new present per step (past + new keys);
    # "in_place", onnxruntime's GroupQueryAttention, whose past K/V may be a longer buffer that the step
    # appends to (`export --kv-in-place`; docs/step-contract.md)
    kv_cache: str = checked(schema.one_of(KV_CACHE_FORMS, optional=True), default="concat")
    # the oldest runtime that has every op the graphs use
    requires: dict[str, str] = checked(
        schema.obj("an object", {"onnxruntime": schema.string("a version such as '1.32'", optional=True)}, optional=True),
        default_factory=dict,
    )
    graphs: dict[str, GraphRecord] = checked(
        schema.Rule("object", "an object with 'prefill' and 'decode'", values=schema.record(GraphRecord), keys=GRAPHS),
        default_factory=dict,
    )
    # what an engine of this artifact needs (tensorrt target)
    plugins: tuple[PluginRecord, ...] = checked(schema.objects(PluginRecord, optional=True, cpp=True), default=())
    states: tuple[StateRecord, ...] = checked(schema.objects(StateRecord, cpp=True), default=())
    generation: GenerationRecord = checked(schema.record(GenerationRecord, optional=True, cpp=True), default=GenerationRecord())
    # {"file": "tokenizer.json"}
    tokenizer: dict[str, str] | None = checked(
        schema.obj("an object or null", {"file": schema.string("a file name", cpp=True)}, optional=True, cpp=True), default=None
    )
    # optional: a runtime works without them (token ids only)
    side_files: tuple[FileRecord, ...] = checked(schema.objects(FileRecord, optional=True), default=())
    # required, checked by size at load and by SHA-256 with `verify`
    files: tuple[FileRecord, ...] = checked(schema.objects(FileRecord, cpp=True), default=())
    # versions and source, for people
    exporter: dict[str, Any] = checked(schema.obj("an object", optional=True), default_factory=dict)
    engines: dict[str, EngineRecord] = checked(
        schema.Rule("object", "an object", values=schema.record(EngineRecord, cpp=True), optional=True, cpp=True),
        omit_none=True,
        default_factory=dict,
    )

    def graph(self, name: str) -> GraphRecord:
        return self.graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.path / self.graphs[name].file

    @property
    def tokenizer_file(self) -> Path | None:
        name = (self.tokenizer or {}).get("file")
        return self.path / name if name else None


MANIFEST = schema.record(Manifest)  # the whole manifest.json, past its format fields


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
    _check(raw, file)
    manifest = schema.load(Manifest, raw, path=path)
    for entry in manifest.files:
        f = path / entry.name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in {MANIFEST_FILE})")
        if f.stat().st_size != entry.bytes:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, {MANIFEST_FILE} records {entry.bytes} (truncated or replaced)")
    return manifest


def write_manifest(manifest: Manifest) -> Path:
    """Write (or replace) `manifest.json` in the artifact directory, atomically; a manifest the reader
    would refuse is never written."""
    from nemotron_deploy.runtime.artifact.atomic import write_file

    raw = to_json(manifest)
    _check(raw, manifest.path / MANIFEST_FILE)
    return write_file(manifest.path / MANIFEST_FILE, json.dumps(raw, indent=2).encode())


def _check(raw: dict, file: Path) -> None:
    try:
        schema.check(raw, MANIFEST)
    except schema.SchemaError as e:
        raise ArtifactError(f"{file}: {e}") from None


def to_json(record) -> Any:
    """A record as JSON values; a Manifest with its format fields first."""
    if isinstance(record, Manifest):
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **schema.to_json(record)}
    return schema.to_json(record)


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
