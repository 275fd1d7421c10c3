"""Opening a backend by name. Every backend offers `initial_state(batch)` and
`step(graph, input_ids, attention_mask, state) -> (logits (B, V), state)` to the one decode loop
(runtime/decode.py), and `max_prefill_tokens` where one prefill call takes a limited number of tokens."""

from __future__ import annotations

from pathlib import Path

from nemotron_deploy.runtime.artifact.manifest import ArtifactError, Manifest

BACKENDS = ("onnxruntime", "tensorrt", "reference")


def open_backend(
    manifest: Manifest,
    backend: str = "onnxruntime",
    providers: list[str] | None = None,
    threads: int | None = None,
    engine: str | None = None,
    plugins: str | Path | None = None,
    cache=None,
):
    """onnxruntime: the onnxruntime / tensorrt-rtx targets on onnxruntime. tensorrt: the engines of
    `nemotron-deploy build` on a GPU. reference: a tensorrt-target artifact on the CPU, plugin nodes
    run by their torch references (for checks). cache: onnxruntime's pre-packed weights cache
    (runtime/onnx_prepacked.CachePolicy; default: on, in its default place)."""
    if backend == "onnxruntime":
        from nemotron_deploy.runtime.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, providers, threads, cache)
    if backend == "tensorrt":
        from nemotron_deploy.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(manifest, engine=engine, plugins=plugins)
    if backend == "reference":
        try:
            from nemotron_deploy.exporter.plugin_reference import PluginReferenceBackend
        except ImportError as e:
            raise ArtifactError(f"backend 'reference' needs torch and onnx (pip install 'nemotron-deploy[export]'): {e}") from None
        return PluginReferenceBackend(manifest)
    raise ArtifactError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
