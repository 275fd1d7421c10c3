"""Pre-packed weights on disk: what lets an onnxruntime session of a quantized artifact map its weights
instead of copying them.

onnxruntime's MatMulNBits and QMoE kernels re-lay their integer weights at session creation
("pre-packing": into the layout of the CPU's int8 dot-product kernels, with per-block sums), and only
then are they fast (2.6x at one token, docs/export.md). Packed in memory, that is a private copy of
every quantized weight per session and per process. So the first open of a quantized artifact on a
machine saves the optimized graph with its packed weights (onnxruntime's
`session.save_external_prepacked_constant_initializers`) into a cache directory, once; every later
open loads that model, and onnxruntime maps the packed weights from the cache's data file: file
pages, which every process that opens the artifact shares.

    cache directory (CACHE_FORMAT, key)   model.onnx   the optimized step graph
                                          model.data   its initializers, then each packed weight (4 KiB aligned)

The packed layout depends on the CPU's instruction sets and on the onnxruntime build, so the key hashes
the artifact's graph and weights (their SHA-256 in the manifest), onnxruntime's version and the CPU's
model and flags. onnxruntime recomputes each packed weight at load and compares it with the mapped
one (1.32 refuses a difference); a cache that fails to load is rebuilt once.

Where: `NEMOTRON_DEPLOY_CACHE` if set, else `<artifact>/.onnxruntime-cache` when the artifact directory
is writable, else `$XDG_CACHE_HOME/nemotron-deploy` (`~/.cache/nemotron-deploy`);
`NEMOTRON_DEPLOY_CACHE=none` turns the cache off (each session packs in memory, as onnxruntime does by
default). The build runs in a child process: its peak memory (onnxruntime packs in memory before
writing) is never the serving process's. Float artifacts need no cache: their MatMuls run as fast
unpacked (docs/export.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from nemotron_deploy.runtime.manifest import WEIGHTS_FILE, ArtifactError, Manifest

CACHE_FORMAT = 1  # bump when the cache's layout or build options change
CACHE_ENV = "NEMOTRON_DEPLOY_CACHE"
MODEL_FILE, DATA_FILE = "model.onnx", "model.data"
_MIN_EXTERNAL_BYTES = 1024  # initializers smaller than this stay inside model.onnx

log = logging.getLogger(__name__)


def packs(manifest: Manifest, providers: list[str]) -> bool:
    """A quantized artifact on the CPU provider: its kernels pay for pre-packing (float ones do not)."""
    return manifest.quantization is not None and providers == ["CPUExecutionProvider"]


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "").lower() != "none"


def prepacked_model(manifest: Manifest, graph_file: str) -> Path:
    """The cached optimized model (with packed weights) of `graph_file`, built first if missing."""
    cache = cache_dir(manifest, graph_file)
    if not (cache / MODEL_FILE).is_file():
        build(manifest, graph_file, cache)
    return cache / MODEL_FILE


def load_model(path: Path):
    """A cached ModelProto without its data (for its initializers' places in DATA_FILE)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def packed_ranges(model) -> list[tuple[int, int]]:
    """(start, end) in DATA_FILE of every packed weight of a cached model (its initializers'
    `prepacked_<i>` entries: "<kernel>+<hash>|<offset>;<length>;<alignment>", several joined by '|')."""
    ranges = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key.startswith("prepacked"):
                for blob in entry.value.split("|")[1:]:
                    offset, length = (int(v) for v in blob.split(";")[:2])
                    ranges.append((offset, offset + length))
    return ranges


def discard(model_path: Path) -> None:
    """Remove a cache directory that failed to load (it is rebuilt on the next open)."""
    shutil.rmtree(model_path.parent, ignore_errors=True)


def cache_dir(manifest: Manifest, graph_file: str) -> Path:
    return _cache_root(manifest.path) / f"{Path(graph_file).stem}-{cache_key(manifest, graph_file)}"


def cache_key(manifest: Manifest, graph_file: str) -> str:
    """What the packed bytes depend on: the graph and weights, onnxruntime, the CPU."""
    import onnxruntime as ort

    digests = {f.name: f.sha256 or f"{f.bytes} bytes" for f in manifest.files}
    parts = {
        "format": CACHE_FORMAT,
        "graph": digests.get(graph_file),
        "weights": digests.get(WEIGHTS_FILE),
        "onnxruntime": ort.__version__,
        "cpu": _cpu_identity(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _cpu_identity() -> str:
    """The CPU model and its feature flags (the kernels' packing depends on the instruction sets)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _cache_root(artifact: Path) -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.access(artifact, os.W_OK):
        return artifact / ".onnxruntime-cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nemotron-deploy"


def build(manifest: Manifest, graph_file: str, cache: Path) -> None:
    """Build `cache` in a child process (see the module docstring); atomic: the directory appears whole.
    Another process that built it first wins; ours is dropped."""
    from nemotron_deploy.runtime.atomic import make_staging, new_directory

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"{cache.parent}: cannot create the pre-packed weights cache there ({e.strerror}); set {CACHE_ENV}") from None
    log.info("%s: packing the quantized weights once for this machine into %s", manifest.path, cache)
    try:
        with new_directory(cache, make_staging(cache)) as staging:
            cmd = [sys.executable, "-m", "nemotron_deploy.runtime.onnx_prepacked", str(manifest.path / graph_file), str(staging)]
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                how = "was killed (out of memory?)" if done.returncode < 0 else f"exited with {done.returncode}"
                tail = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
                raise ArtifactError(f"{manifest.path / graph_file}: building its pre-packed weights in {cache} failed: the builder {how}: {tail}")
    except OSError:  # the rename: another process built the same cache first
        if not (cache / MODEL_FILE).is_file():
            raise


def _build_child(graph_path: str, out: str) -> None:
    """Open `graph_path` once with onnxruntime, saving the optimized model and its packed weights to `out`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(Path(out) / MODEL_FILE)
    for key, value in {
        "session.optimized_model_external_initializers_file_name": DATA_FILE,
        "session.optimized_model_external_initializers_min_size_in_bytes": str(_MIN_EXTERNAL_BYTES),
        "session.save_external_prepacked_constant_initializers": "1",
    }.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3  # not its notice that the saved model is for this machine: the key says so
    ort.InferenceSession(graph_path, options, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    _build_child(*sys.argv[1:])
