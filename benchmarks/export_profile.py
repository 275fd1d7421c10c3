"""Measure one export in a fresh child process: seconds per phase and layer, peak memory, graph sizes.

Memory is sampled from /proc/self/status every few milliseconds in the child: `RssAnon` (anonymous
memory: copies, what can run a machine out of memory) and `VmRSS` (that plus file pages, e.g. the
memory-mapped checkpoint, which the kernel can evict). Peaks are reported over the child's baseline
after its imports, so they measure the export, not the interpreter. Linux only.

    python benchmarks/export_profile.py CHECKPOINT OUT [--target T] [--dtype D]
    python benchmarks/export_profile.py --session ARTIFACT   (onnxruntime session creation)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class ChildFailed(RuntimeError):
    """The measured child process failed (or was killed)."""


def profile_export(
    checkpoint: str | Path,
    out: str | Path,
    target: str = "onnxruntime",
    dtype: str = "float32",
    env: dict | None = None,
    quantize: str | None = None,
    trace_cache: str | Path | None = None,
) -> dict:
    """Run the export in a child process and return its measurements (see `_export_child`).
    env: the child's environment (e.g. a PYTHONPATH that puts another version of the package first).
    quantize: "int8" | "int4" (`export --quantize`), or None.
    trace_cache: the trace cache's folder (NEMOTRON_DEPLOY_CACHE), or None: traced afresh, cache off
    (revisions before the cache always trace)."""
    args = [str(checkpoint), str(out), "--target", target, "--dtype", dtype, *(["--quantize", quantize] if quantize else [])]
    return _run_child(args + (["--trace-cache", str(trace_cache)] if trace_cache else []), env)


def profile_session(artifact: str | Path, env: dict | None = None) -> dict:
    """Open an artifact on onnxruntime in a child process: seconds and peak memory of creating both
    graphs' sessions (see `_session_child`)."""
    return _run_child(["--session", str(artifact)], env)


def _run_child(args: list[str], env: dict | None) -> dict:
    cmd = [sys.executable, "-c", f"import runpy, sys; sys.argv[1:] = {args!r}; runpy.run_path({__file__!r}, run_name='__main__')"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        how = "was killed (SIGKILL: out of memory?)" if done.returncode == -9 else f"exited with {done.returncode}"
        raise ChildFailed(f"child process {args} {how}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# Self-contained on purpose (no import from the rest of the package): the benchmark runs this file
# against other revisions of nemotron_deploy (a baseline put first on PYTHONPATH).
def _package_module(now: str, before: str):
    """nemotron_deploy.<now>, or nemotron_deploy.<before> in a revision from before the layers pass
    (issue 25 moved the manifest to runtime/artifact/ and the backends to runtime/backends/)."""
    import importlib

    try:
        return importlib.import_module(f"nemotron_deploy.{now}")
    except ModuleNotFoundError:
        return importlib.import_module(f"nemotron_deploy.{before}")


def _status_kb(fields=("RssAnon", "VmRSS")) -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in fields:
                values[key] = int(line.split()[1])
    return values


class _Sampler:
    """Peak RssAnon / VmRSS over a background thread's samples."""

    def __init__(self, interval_s: float = 0.005):
        import threading

        self.interval, self.peak = interval_s, _status_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for key, value in _status_kb().items():
                self.peak[key] = max(self.peak[key], value)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in _status_kb().items():
            self.peak[key] = max(self.peak[key], value)


def _export_child(argv: list[str]) -> dict:
    import argparse
    import inspect
    import time

    import onnx
    import onnxscript  # noqa: F401  (imported before the baseline: their cost is not the export's)
    import torch.onnx  # noqa: F401

    from nemotron_deploy.exporter.onnx_export import export_artifact

    WEIGHTS_FILE = _package_module("runtime.artifact.manifest", "runtime.manifest").WEIGHTS_FILE

    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--target", default="onnxruntime")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--trace-cache", default=None)
    args = ap.parse_args(argv)
    timings: dict = {}
    parameters = inspect.signature(export_artifact).parameters
    extra = {"timings": timings} if "timings" in parameters else {}  # older exporters
    if "trace_cache" in parameters:
        extra["trace_cache"] = args.trace_cache is not None
        if args.trace_cache:
            os.environ["NEMOTRON_DEPLOY_CACHE"] = args.trace_cache
    if args.quantize:
        extra["quantize"] = args.quantize
    base = _status_kb()
    start = time.perf_counter()
    with _Sampler() as sampler:
        artifact = export_artifact(args.checkpoint, args.out, target=args.target, dtype=args.dtype, progress=False, **extra)
    seconds = time.perf_counter() - start
    nodes = {}
    for graph, record in json.loads((artifact / "manifest.json").read_text())["graphs"].items():  # a step graph serves both
        proto = onnx.load(str(artifact / record["file"]), load_external_data=False)
        nodes[graph] = len(proto.graph.node)
    return {
        "seconds": seconds,
        "timings": timings,
        "peak_anon_mb": (sampler.peak["RssAnon"] - base["RssAnon"]) / 1024,
        "peak_rss_mb": (sampler.peak["VmRSS"] - base["VmRSS"]) / 1024,
        "baseline_anon_mb": base["RssAnon"] / 1024,
        "nodes": nodes,
        "weights_mb": (artifact / WEIGHTS_FILE).stat().st_size / 2**20,
    }


def _session_child(artifact: str) -> dict:
    """Open the artifact the way the runtime does (`OnnxRuntimeBackend`: both graphs, their weights
    handed to onnxruntime over one read-only memory map of weights.data)."""
    import time

    read_manifest = _package_module("runtime.artifact.manifest", "runtime.manifest").read_manifest
    OnnxRuntimeBackend = _package_module("runtime.backends.onnxruntime_backend", "runtime.onnx_backend").OnnxRuntimeBackend

    manifest = read_manifest(artifact)
    base = _status_kb()
    start = time.perf_counter()
    with _Sampler() as sampler:
        backend = OnnxRuntimeBackend(manifest)
    del backend
    return {
        "seconds": time.perf_counter() - start,
        "peak_anon_mb": (sampler.peak["RssAnon"] - base["RssAnon"]) / 1024,
        "peak_rss_mb": (sampler.peak["VmRSS"] - base["VmRSS"]) / 1024,
    }


if __name__ == "__main__":
    if sys.argv[1] == "--session":
        print(json.dumps(_session_child(sys.argv[2])))
    else:
        print(json.dumps(_export_child(sys.argv[1:])))
