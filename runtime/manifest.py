"""The artifact manifest: what an exported directory holds, read by every runtime.

An artifact directory holds `manifest.json` (written last: an export that did not finish has none),
one `.onnx` per step graph (`prefill`: T >= 1 new tokens, `decode`: T = 1), `weights.data` (the
weights of both graphs, stored once), and the checkpoint's tokenizer and generation config if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_deploy.runtime.errors import NemotronDeployError, read_json_object

FORMAT = "nemotron-deploy-artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


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
    for entry in raw.get("files", []):
        f = path / entry["name"]
        if not f.is_file():
            raise ArtifactError(f"{f}: missing (listed in {MANIFEST_FILE})")
        if f.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, {MANIFEST_FILE} records {entry['bytes']} (truncated or replaced)")
    return Manifest(path, raw)


_NUMPY = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


def state_dtype(name: str):
    """numpy dtype of a state dtype name (bfloat16 states are carried as raw uint16 by numpy backends)."""
    return _NUMPY.get(name, np.uint16 if name == "bfloat16" else None)


def initial_state_shapes(manifest: Manifest, batch: int) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype name) of every state of `batch` new sequences (K/V with past length 0)."""
    return {
        s["name"]: ([batch if d == "batch" else 0 if isinstance(d, str) else d for d in s["shape"]], s["dtype"])
        for s in manifest.states
    }


def zero_state(manifest: Manifest, batch: int) -> dict[str, np.ndarray]:
    """Zero states for `batch` new sequences, as numpy arrays."""
    return {name: np.zeros(shape, dtype=state_dtype(dtype)) for name, (shape, dtype) in initial_state_shapes(manifest, batch).items()}
