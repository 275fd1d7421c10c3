"""A cache of finished graphs, so that exporting an architecture exported before skips torch.onnx.

A finished graph (exporter/tracing.py `finished_graph`: traced, stitched, graph passes run) holds no
weights: every weight is a placeholder with its `WeightSpec`, bound from the checkpoint afterwards. So it
depends on the architecture, not on the weights, and a fine-tuned checkpoint re-exported, or the same
model exported again to another folder, can take it from here instead of tracing (6-7 s of one core
for Nemotron-H-4B, whatever the depth; docs/export.md).

Key: the SHA-256 of everything a finished graph depends on: the model's config (`ModelConfig.to_dict()`),
the compute dtype, the graph kind, the target, the quantization scheme, the versions of Python, torch,
onnx, onnx_ir, onnxscript and numpy, and the contents of every source file of ours the exporter imports
(exporter/, plugins/, runtime/artifact/: any change to the code that traces is a new key). An entry `<key>/` holds `graph.onnx` (placeholders
without data) and `graph.json` (the weight specs and the key); it is written in a temporary folder
renamed into place, and read only if its `graph.json` names its key. A damaged entry is traced again
with one warning line and replaced. At most `MAX_ENTRIES` entries: the least recently used go first.

Where: `$NEMOTRON_DEPLOY_CACHE/traces` if that is set (`none`: off), else
`$XDG_CACHE_HOME/nemotron-deploy/traces` (`~/.cache/...`); `export --no-cache` neither reads nor writes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

from nemotron_deploy.runtime.artifact.cache_folder import CACHE_ENV, user_cache_folder

MAX_ENTRIES = 32
_GRAPH = "graph"  # graph.onnx + graph.json, as exporter/tracing.py `save_finished` writes them
_PACKAGES = ("torch", "onnx", "onnx_ir", "onnxscript", "numpy")
_ROOT = Path(__file__).resolve().parents[1]
_SOURCES = (_ROOT / "exporter", _ROOT / "plugins", _ROOT / "runtime" / "artifact")  # what the exporter imports of ours


def default_root() -> Path | None:
    """The cache folder: NEMOTRON_DEPLOY_CACHE's `traces`, or the user's cache folder's; None when off."""
    env = os.environ.get(CACHE_ENV, "")
    if env.lower() == "none":
        return None
    return (Path(env) if env else user_cache_folder()) / "traces"


class TraceCache:
    """Finished graphs by key, in `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def key(self, model, dtype: str, graph: str, target: str, quantize, kv_in_place: bool = False) -> str:
        """The entry's name for `model`'s (a meta NemotronHStepModel) `graph` graph."""
        described = {
            "config": model.cfg.to_dict(),
            "dtype": dtype,
            "graph": graph,
            "target": target,
            "quantize": None if quantize is None else quantize.to_json(),
            "kv_in_place": kv_in_place,
            "python": sys.version,
            "packages": {name: _version(name) for name in _PACKAGES},
            "code": _code_digest(),
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def load(self, key: str):
        """(onnx_ir Model, {initializer: WeightSpec}) of entry `key`, or None when there is none or it is
        damaged (one warning line; the entry is removed, to be written again)."""
        from nemotron_deploy.exporter.tracing import load_finished

        entry = self.root / key
        if not entry.is_dir():
            return None
        try:
            ir_model, specs, meta = load_finished(entry / _GRAPH)
            if meta.get("key") != key:
                raise ValueError(f"graph.json names key {meta.get('key')!r}")
        except Exception as e:  # any damage: never used, traced again
            warnings.warn(f"trace cache entry {entry} is damaged ({str(e).splitlines()[0][:120]}); tracing again", stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        os.utime(entry)  # recently used
        return ir_model, specs

    def store(self, key: str, ir_model, specs: dict) -> None:
        """Write entry `key` (its weights become data-less placeholders: bind them after this). A cache
        that cannot be written is skipped with one warning line: the export goes on."""
        from nemotron_deploy.exporter.tracing import save_finished

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
            try:
                save_finished(ir_model, specs, tmp / _GRAPH, key=key)
                os.rename(tmp, self.root / key)
            except OSError:
                if not (self.root / key).is_dir():  # not a second export that stored it first
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._evict()
        except OSError as e:
            warnings.warn(f"trace cache {self.root} cannot be written ({e.strerror or e}); exporting without it", stacklevel=2)

    def _evict(self) -> None:
        entries = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for old in entries[:-MAX_ENTRIES]:
            shutil.rmtree(old, ignore_errors=True)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _code_digest() -> str:
    """SHA-256 of the source files in `_SOURCES` (path and bytes), once per process."""
    digest = hashlib.sha256()
    for folder in _SOURCES:
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
