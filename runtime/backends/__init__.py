"""The backends, one module each, and opening one by name. Each implements `interface.Backend`, what
the one decode loop (runtime/decode.py) and the continuous batcher call:

    onnxruntime_backend  the onnxruntime and tensorrt-rtx targets on onnxruntime (CPU or a provider)
    tensorrt_backend     the engines of `nemotron-deploy build` on a GPU
    reference_backend    a tensorrt-target artifact on the CPU, plugin nodes run by their torch references
    torch_backend        the exporter's torch step model itself (the parity tests' middle ground)
"""

from __future__ import annotations

from pathlib import Path

from nemotron_deploy.runtime.artifact.manifest import ArtifactError, Manifest
from nemotron_deploy.runtime.backends.interface import Backend

BACKENDS = ("onnxruntime", "tensorrt", "reference")


def open_backend(
    manifest: Manifest,
    backend: str = "onnxruntime",
    providers: list[str] | None = None,
    threads: int | None = None,
    engine: str | None = None,
    plugins: str | Path | None = None,
    cache=None,
) -> Backend:
    """onnxruntime: the onnxruntime / tensorrt-rtx targets on onnxruntime. tensorrt: the engines of
    `nemotron-deploy build` on a GPU. reference: a tensorrt-target artifact on the CPU, plugin nodes
    run by their torch references (for checks). cache: onnxruntime's pre-packed weights cache
    (runtime/onnx_prepacked.CachePolicy; default: on, in its default place)."""
    if backend == "onnxruntime":
        from nemotron_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, providers, threads, cache)
    if backend == "tensorrt":
        from nemotron_deploy.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(manifest, engine=engine, plugins=plugins)
    if backend == "reference":
        try:
            from nemotron_deploy.runtime.backends.reference_backend import PluginReferenceBackend
        except ImportError as e:
            raise ArtifactError(f"backend 'reference' needs torch and onnx (pip install 'nemotron-deploy[export]'): {e}") from None
        return PluginReferenceBackend(manifest)
    raise ArtifactError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
