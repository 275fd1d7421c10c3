"""The artifact manifest: what an exported directory holds, read by every runtime.

An artifact directory holds `manifest.json` (written last: an export that did not finish has none),
one `.onnx` per step graph (`prefill`: T >= 1 new tokens, `decode`: T = 1), `weights.data` (the
weights of both graphs, stored once), and the checkpoint's tokenizer and generation config if any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_deploy.runtime.dtypes import FLOAT_DTYPES, numpy_dtype
from nemotron_deploy.runtime.errors import NemotronDeployError, read_json_object

FORMAT = "nemotron-deploy-artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPHS = ("prefill", "decode")  # the step graphs of every artifact
WEIGHTS_FILE = "weights.data"  # the weights of both graphs, stored once (ONNX external data)


class ArtifactError(NemotronDeployError):
    """An artifact directory is missing files, corrupted, or of another format version."""


@dataclass(frozen=True)
class Manifest:
    path: Path  # the artifact directory
    raw: dict[str, Any]

    @property
    def target(self) -> str:
        return self.raw["target"]

    @property
    def dtype(self) -> str:
        return self.raw["dtype"]

    @property
    def model(self) -> dict[str, Any]:
        return self.raw["model"]

    @property
    def states(self) -> list[dict[str, Any]]:
        """Per-state records: name (past.*), present (present.*), role, layer, dtype, shape."""
        return self.raw["states"]

    def graph(self, name: str) -> dict[str, Any]:
        return self.raw["graphs"][name]

    def graph_path(self, name: str) -> Path:
        return self.path / self.graph(name)["file"]

    @property
    def generation(self) -> dict[str, Any]:
        return self.raw.get("generation", {})

    @property
    def plugins(self) -> list[dict[str, Any]]:
        """Plugins the graphs use (tensorrt target): name, version, namespace."""
        return self.raw.get("plugins", [])

    @property
    def quantization(self) -> dict[str, Any] | None:
        """`export --quantize` scheme (bits, block_size, ...) or None for float weights."""
        return self.raw.get("quantization")

    @property
    def tokenizer_file(self) -> Path | None:
        name = (self.raw.get("tokenizer") or {}).get("file")
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
    for entry in raw["files"]:
        f = path / entry["name"]
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in {MANIFEST_FILE})")
        if f.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, {MANIFEST_FILE} records {entry['bytes']} (truncated or replaced)")
    return Manifest(path, raw)


# ------------------------------------------------------------------------------------------ validation
# Every field a runtime reads, checked when an artifact is opened, so a damaged manifest is one line
# naming the field, never a KeyError or a numpy error deep inside a backend.
STATE_ROLES = ("conv_state", "ssm_state", "key", "value")


def _validate(raw: dict, file: Path) -> None:  # noqa: C901  (one flat list of checks reads best)
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
    file = manifest.graph(graph)["file"]
    unlisted = sorted(set(inputs) - {s["name"] for s in manifest.states} - {"input_ids", "attention_mask"})
    if unlisted:
        raise ArtifactError(f"{where}: {file} takes state '{unlisted[0]}', which the manifest's 'states' do not list")
    for state in manifest.states:
        if state["name"] not in inputs:
            raise ArtifactError(f"{where}: state '{state['name']}' is not an input of {file}")
        dtype, dims = inputs[state["name"]]
        if dtype != state["dtype"]:
            raise ArtifactError(f"{where}: state '{state['name']}' has dtype {state['dtype']}, {file} takes {dtype}")
        if len(dims) != len(state["shape"]) or any(isinstance(d, int) and state["shape"][i] != d for i, d in enumerate(dims)):
            raise ArtifactError(f"{where}: state '{state['name']}' has shape {state['shape']}, {file} takes {dims}")


def initial_state_shapes(manifest: Manifest, batch: int) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype name) of every state of `batch` new sequences (K/V with past length 0)."""
    return {
        s["name"]: ([batch if d == "batch" else 0 if isinstance(d, str) else d for d in s["shape"]], s["dtype"])
        for s in manifest.states
    }


def zero_state(manifest: Manifest, batch: int) -> dict[str, np.ndarray]:
    """Zero states for `batch` new sequences, as numpy arrays."""
    return {name: np.zeros(shape, dtype=numpy_dtype(dtype)) for name, (shape, dtype) in initial_state_shapes(manifest, batch).items()}
