"""`nemotron-deploy triton`: a Triton model repository for an artifact, written whole or not at all.

`generate` repositories point at the artifact directory (absolute path, nothing copied): the models
import nemotron_deploy, which must be installed in the Python environment the server's Python backend
uses. `step` repositories hold the step graph itself (`1/model.onnx` with its `weights.data`, or
`1/model.plan`), hard-linked from the artifact where the filesystem allows, else copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nemotron_deploy.runtime.artifact.atomic import new_directory
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import WEIGHTS_FILE, Manifest, read_manifest
from nemotron_deploy.runtime.onnx_prepacked import CACHE_OFF, CachePolicy, graph_files, packs, prepacked_model
from nemotron_deploy.runtime.serving.triton import configs

KINDS = ("generate", "step")

# model.py of each Python-backend model: the code lives in the installed package, versioned with it
_MODEL_PY = """\
# Written by `nemotron-deploy triton`. The model is {module}.{cls}, from the nemotron-deploy package
# installed in the Python environment that serves this repository.
from {module} import {cls} as TritonPythonModel  # noqa: F401
"""
_PYTHON_MODELS = {
    configs.GENERATE_MODEL: ("nemotron_deploy.runtime.serving.triton.generate_model", "TritonPythonModel"),
    "preprocessing": ("nemotron_deploy.runtime.serving.triton.text_models", "Preprocessing"),
}


def write_repository(
    artifact_dir: str | Path,
    out: str | Path,
    *,
    kind: str = "generate",
    instances: int = 1,
    max_batch: int = 8,
    backend: str | None = None,
    threads: int | None = None,
    prefill_chunk: int | None = 256,
    cache: CachePolicy | None = None,
    prefix_cache_mb: float | None = None,
) -> Path:
    """Write the repository to `out` (which must not exist); returns its path.

    max_batch: sequences decoded together per instance (generate), or requests batched per step
    (step). backend: onnxruntime | tensorrt for `generate` (default: tensorrt when the artifact has
    engines, else onnxruntime). threads: onnxruntime intra-op threads per instance. prefill_chunk:
    prompt tokens per prefill call of the generate model (None: whole prompts). cache: the onnxruntime
    backend's pre-packed weights cache (default: on, in its default place), built here for a quantized
    artifact (`optimize`), so that the instances only map it. prefix_cache_mb: the generate model's
    prefix cache per instance (None: runtime/prefix_cache.py's default for the serving machine; 0: off).
    """
    if kind not in KINDS:
        raise NemotronDeployError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if instances < 1 or max_batch < 1:
        raise NemotronDeployError(f"--instances {instances} / --max-batch {max_batch}: expected >= 1")
    manifest = read_manifest(artifact_dir)
    if kind == "step" and manifest.kv_cache == "in_place" and max_batch > 1:
        raise NemotronDeployError(
            f"{manifest.path}: --kind step --max-batch {max_batch} with a --kv-in-place artifact: Triton's onnxruntime backend "
            "would batch several sequences' multi-token steps, which onnxruntime's GroupQueryAttention refuses; use --max-batch 1, "
            "--kind generate (which batches them), or an export without --kv-in-place"
        )
    with new_directory(out) as staging:
        if kind == "generate":
            backend = _generate_backend(manifest, backend)
            cache_param = _prepare_cache(manifest, cache) if backend == "onnxruntime" else ""
            _write_generate(staging, manifest, instances, max_batch, backend, threads, prefill_chunk, cache_param, prefix_cache_mb)
        else:
            _write_step(staging, manifest, instances, max_batch)
    return Path(out)


def _generate_backend(manifest: Manifest, backend: str | None) -> str:
    engines = manifest.engines
    backend = backend or ("tensorrt" if engines else "onnxruntime")
    if backend not in ("onnxruntime", "tensorrt"):
        raise NemotronDeployError(f"--backend {backend!r}: expected onnxruntime or tensorrt")
    if backend == "onnxruntime" and manifest.plugins:
        raise NemotronDeployError(
            f"{manifest.path}: a '{manifest.target}' artifact has plugin nodes and needs its TensorRT engines "
            "(nemotron-deploy build, then --backend tensorrt); for onnxruntime export --target onnxruntime"
        )
    if backend == "tensorrt" and not engines:
        raise NemotronDeployError(f"{manifest.path}: no TensorRT engines; build them first: nemotron-deploy build {manifest.path}")
    return backend


def _write_model(repo: Path, config) -> Path:
    model_dir = repo / config.name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(configs.to_text(config))
    if config.name in _PYTHON_MODELS:
        module, cls = _PYTHON_MODELS[config.name]
        (model_dir / "1" / "model.py").write_text(_MODEL_PY.format(module=module, cls=cls))
    return model_dir


def _prepare_cache(manifest: Manifest, cache: CachePolicy | None) -> str:
    """The generate model's `prepacked_cache` parameter: the cache root the instances use ("off": none),
    with a quantized artifact's entries built now (a failure warns; the instances then pack in memory)."""
    root = (cache or CachePolicy()).root(manifest.path)
    if root is None:
        return CACHE_OFF
    root = root.resolve()
    if packs(manifest, ["CPUExecutionProvider"]):
        for graph_file in graph_files(manifest):
            prepacked_model(manifest, graph_file, CachePolicy(directory=root))
    return str(root)


def _write_generate(
    repo: Path,
    manifest: Manifest,
    instances: int,
    max_batch: int,
    backend: str,
    threads: int | None,
    prefill_chunk: int | None,
    cache: str,
    prefix_cache_mb: float | None = None,
) -> None:
    artifact = str(manifest.path.resolve())
    params = {
        "artifact_dir": artifact,
        "backend": backend,
        "max_active_sequences": str(max_batch),
        "exclude_input_in_output": "true",
        "prefill_chunk_size": str(prefill_chunk or ""),
        "threads": str(threads or ""),
        "prepacked_cache": cache,
        "prefix_cache_mb": "" if prefix_cache_mb is None else f"{prefix_cache_mb:g}",
    }
    text = manifest.tokenizer_file is not None and manifest.tokenizer_file.is_file()
    _write_model(repo, configs.generate_model(params, max_batch=max_batch, instances=instances, text=text))
    if text:
        for config in configs.text_models(artifact, max_batch=max_batch).values():
            _write_model(repo, config)


def _write_step(repo: Path, manifest: Manifest, instances: int, max_batch: int) -> None:
    engines = manifest.engines
    if manifest.plugins and "tensorrt" not in engines:
        raise NemotronDeployError(
            f"{manifest.path}: a step model of a '{manifest.target}' artifact runs its TensorRT engine; "
            f"build it first: nemotron-deploy build {manifest.path} --engine tensorrt"
        )
    if manifest.plugins:
        platform, sources = "tensorrt_plan", {"model.plan": engines["tensorrt"].graphs["prefill"].file}
    else:
        platform, sources = "onnxruntime_onnx", {"model.onnx": manifest.graph("prefill").file, WEIGHTS_FILE: WEIGHTS_FILE}
    model_dir = _write_model(repo, configs.step_model(manifest, platform=platform, max_batch=max_batch, instances=instances))
    for name, source in sources.items():
        _link_or_copy(manifest.path / source, model_dir / "1" / name)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
