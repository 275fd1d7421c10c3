"""Artifact -> TensorRT engines: parse each step graph (with the plugin library loaded), set its
optimization profile, build, and write `<graph>.<engine>.plan` next to the ONNX, recorded in the manifest.

Two builders share this code, as they share the nvinfer1 API:
  tensorrt      TensorRT 10 (`import tensorrt`), plugins supported: builds tensorrt-target artifacts.
  tensorrt-rtx  TensorRT for RTX (`import tensorrt_rtx`), no plugin layer, strongly typed networks:
                builds tensorrt-rtx-target artifacts, also ahead of time for a named compute capability
                on a machine without a GPU (that is how CI proves our standard ops build).
A build box needs only the builder's wheel (torch, if present, only tells which GPU a native build targets).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.plugins.tensorrt_common import (
    ENGINES,
    TensorRTError,
    import_engine,
    load_plugins,
    make_logger,
    plugin_library_path,
)
from nemotron_deploy.runtime.artifact.atomic import new_files, write_file
from nemotron_deploy.runtime.artifact.integrity import file_records
from nemotron_deploy.runtime.artifact.manifest import GRAPHS, EngineRecord, Manifest, PlanRecord, read_manifest, write_manifest

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_seq_len: int  # past + new tokens
    max_new_tokens: int  # tokens per prefill call (the runtime splits longer prompts)

    @classmethod
    def default(
        cls, max_position_embeddings: int, max_batch: int = 8, max_seq_len: int | None = None, max_new_tokens: int | None = None
    ) -> "Limits":
        """The limits `build` uses for what it is not given: 4096 tokens (or the model's maximum), 2048
        of them per prefill call."""
        seq = max_seq_len or min(4096, max_position_embeddings)
        return cls(max_batch, seq, max_new_tokens or min(2048, seq))


def profile_shapes(manifest: Manifest, graph: str, limits: Limits) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input of `graph`, from the manifest's symbolic shapes.

    TensorRT checks total_len = past_len + new_tokens at the min, opt and max points, so the three
    ranges are chosen together: a prefill call may bring up to `max_new_tokens` tokens on a past of up
    to max_seq_len - max_new_tokens; a decode call one token on a past of up to max_seq_len - 1.
    """
    new_max = 1 if graph == "decode" else limits.max_new_tokens
    new = (1, min(new_max, 128), new_max)
    past_max = limits.max_seq_len - new_max
    past = (0, min(limits.max_seq_len // 2, past_max), past_max)
    ranges = {
        "batch": (1, max(1, limits.max_batch // 2), limits.max_batch),
        "new_tokens": new,
        "past_len": past,
        "total_len": tuple(p + n for p, n in zip(past, new)),
    }
    shapes = {}
    for spec in manifest.graph(graph).inputs:
        dims = [ranges[d] if isinstance(d, str) else (d, d, d) for d in spec.shape]
        shapes[spec.name] = tuple(tuple(r[i] for r in dims) for i in range(3))
    return shapes


def default_engine(manifest: Manifest) -> str:
    """The engine that builds an artifact of this target; an onnxruntime-target artifact has none."""
    if manifest.target in ENGINES:
        return manifest.target
    raise TensorRTError(
        f"{manifest.path}: exported for target '{manifest.target}' (onnxruntime's MoE node), which TensorRT cannot build; "
        "re-export with --target tensorrt (plugins) or --target tensorrt-rtx"
    )


def gpu_count() -> int:
    """CUDA devices visible here, through the driver library (no torch needed); 0 without a driver."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def build_engines(
    artifact_dir: str | Path,
    engine: str | None = None,
    *,
    plugins: str | Path | None = None,
    precision: str | None = None,
    limits: Limits | None = None,
    compute_capability: str | None = None,
    progress=print,
) -> list[Path]:
    """Build the prefill and decode engines of an artifact; returns the .plan paths.

    engine: default, the artifact's target. compute_capability: build ahead of time for that GPU
    (TensorRT for RTX); without it the build is for this machine's GPU, and a machine without one
    is refused up front rather than recorded as `native`.
    """
    manifest = read_manifest(artifact_dir)
    engine = engine or default_engine(manifest)
    if engine not in ENGINES:
        raise TensorRTError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if manifest.target not in ENGINES[engine].targets:
        raise TensorRTError(
            f"{manifest.path}: exported for target '{manifest.target}', which --engine {engine} cannot build "
            f"(it builds {' / '.join(ENGINES[engine].targets)}); re-export with --target {ENGINES[engine].targets[0]}"
        )
    dtype = _precision(manifest, engine, precision)
    limits = limits or Limits.default(manifest.model.max_position_embeddings)
    _check_limits(limits, manifest.model.max_position_embeddings)
    library_path = plugin_library_path(manifest, plugins) if manifest.plugins else None
    trt = import_engine(engine)
    _check_target_gpu(trt, engine, compute_capability)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    library = None
    if library_path is not None:
        load_plugins(trt, builder.get_plugin_registry(), manifest, library_path)
        library = {"library": str(library_path.resolve()), "plugins": manifest.plugins}
    cache_path = manifest.path / f"{engine}.{TIMING_CACHE}"
    plans = [manifest.path / f"{graph}.{engine}.plan" for graph in GRAPHS]
    records = {}
    # Both plans are renamed into place only once both are built: a failed rebuild leaves the engines
    # the manifest records untouched.
    with new_files(*plans) as partials:
        for graph, plan, partial in zip(GRAPHS, plans, partials):
            progress(f"{graph}: parsing {manifest.graph(graph).file}")
            started = time.monotonic()
            network = _parse(trt, builder, logger, manifest, graph, strongly_typed=engine == "tensorrt-rtx")
            config = _config(trt, builder, engine, dtype, manifest.dtype, compute_capability, cache_path)
            profile = builder.create_optimization_profile()
            shapes = profile_shapes(manifest, graph, limits)
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
            progress(
                f"{graph}: building ({engine}, {PRECISIONS_BY_DTYPE[dtype]}, batch <= {limits.max_batch}, tokens <= {limits.max_seq_len})"
            )
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise TensorRTError(f"{manifest.graph_path(graph)}: the {engine} builder failed: {logger.last_error() or 'no message'}")
            _save_timing_cache(config, cache_path)
            partial.write_bytes(bytes(serialized))
            records[graph] = PlanRecord(plan.name, partial.stat().st_size, {k: [list(s) for s in v] for k, v in shapes.items()})
            progress(f"{graph}: built {plan.name} ({partial.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - started:.0f} s")
    _record(manifest, engine, trt, dtype, limits, compute_capability, library, records)
    return plans


PRECISIONS_BY_DTYPE = {v: k for k, v in PRECISIONS.items()}


def _precision(manifest: Manifest, engine: str, precision: str | None) -> str:
    if precision is None:
        return manifest.dtype
    if precision not in PRECISIONS:
        raise TensorRTError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    # TensorRT for RTX builds strongly typed networks only: precision is the exported graph's
    if dtype != manifest.dtype and (engine == "tensorrt-rtx" or manifest.dtype != "float32"):
        raise TensorRTError(
            f"--precision {precision} for an artifact exported as {manifest.dtype}: "
            + (
                "TensorRT for RTX takes the precision of the graph; re-export with --dtype " + dtype
                if engine == "tensorrt-rtx"
                else "lower precision is only built from a float32 export"
            )
        )
    return dtype


def _check_limits(limits: Limits, max_positions: int) -> None:
    for name, value in (("--max-batch", limits.max_batch), ("--max-seq-len", limits.max_seq_len)):
        if value < 1:
            raise TensorRTError(f"{name} {value}: expected >= 1")
    if limits.max_seq_len > max_positions:
        raise TensorRTError(f"--max-seq-len {limits.max_seq_len}: the model's max_position_embeddings is {max_positions}")
    if not 1 <= limits.max_new_tokens <= limits.max_seq_len:
        raise TensorRTError(f"prefill tokens per call {limits.max_new_tokens}: expected 1..{limits.max_seq_len}")


def _parse(trt, builder, logger, manifest: Manifest, graph: str, strongly_typed: bool):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    path = manifest.graph_path(graph)
    if not parser.parse_from_file(str(path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0] if errors else None
        where = f" (node {first.node_name()}, {first.node_operator()})" if first is not None and first.node_name() else ""
        raise TensorRTError(f"{path}: TensorRT's ONNX parser refused it{where}: {first.desc() if first else logger.last_error()}")
    return network


def _capability_name(compute_capability: str) -> str:
    return "SM" + compute_capability.replace(".", "").removeprefix("sm_").removeprefix("SM")


def _check_target_gpu(trt, engine: str, compute_capability: str | None) -> None:
    """Before parsing anything: a named compute capability must be one the builder knows; without one,
    there must be a GPU to build for."""
    if compute_capability:
        if not hasattr(trt, "ComputeCapability"):
            raise TensorRTError(f"--compute-capability: {engine} builds for the GPU it runs on only")
        if not hasattr(trt.ComputeCapability, _capability_name(compute_capability)):
            choices = sorted((c for c in dir(trt.ComputeCapability) if c.startswith("SM") and c[2:].isdigit()), key=lambda c: int(c[2:]))
            raise TensorRTError(f"--compute-capability {compute_capability}: {engine} {trt.__version__} builds for {', '.join(choices)}")
    elif gpu_count() == 0:
        hint = (
            "give --compute-capability (e.g. 86) to build ahead of time for that GPU"
            if engine == "tensorrt-rtx"
            else "TensorRT builds on the GPU it targets"
        )
        raise TensorRTError(f"no CUDA GPU here: {hint}")


def _config(trt, builder, engine: str, dtype: str, graph_dtype: str, compute_capability: str | None, cache_path: Path):
    config = builder.create_builder_config()
    if engine == "tensorrt" and dtype != graph_dtype:  # weakly typed float32 graph, lower precision allowed
        config.set_flag(trt.BuilderFlag.FP16 if dtype == "float16" else trt.BuilderFlag.BF16)
    if compute_capability:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, _capability_name(compute_capability)), 0)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    return config


def _save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        write_file(path, bytes(cache.serialize()))


def _record(manifest: Manifest, engine: str, trt, dtype: str, limits: Limits, compute_capability, library, records) -> None:
    """Add the engines to the manifest (and its file list), rewriting it atomically."""
    record = EngineRecord(
        version=trt.__version__,
        precision=dtype,
        compute_capability=compute_capability or "native",
        built_on=_gpu_capability(),
        max_batch=limits.max_batch,
        max_seq_len=limits.max_seq_len,
        max_new_tokens=limits.max_new_tokens,
        plugins=library,
        graphs=records,
    )
    plans = [plan.file for plan in records.values()]
    files = tuple(f for f in manifest.files if f.name not in plans) + file_records(manifest.path, plans)
    write_manifest(dataclasses.replace(manifest, engines={**manifest.engines, engine: record}, files=files))


def _gpu_capability() -> str | None:
    """Compute capability of this machine's GPU (what a native build targets), if torch can tell."""
    try:
        import torch

        return "".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None
    except ImportError:
        return None
