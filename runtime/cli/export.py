"""`inspect`, `export`, `build`: a checkpoint looked at, exported to an artifact, built into TensorRT engines."""

from __future__ import annotations

import json

import click

from nemotron_deploy.runtime.cli.common import one_line_errors, require


@click.command()
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@one_line_errors
def inspect(checkpoint_dir: str, as_json: bool) -> None:
    """Layer pattern, parameter counts and state sizes of a Hugging Face NemotronH checkpoint.

    Reads only config.json and the safetensors headers, and checks every tensor against the config.
    """
    from nemotron_deploy.exporter.inspect import format_summary, inspect_checkpoint

    info = inspect_checkpoint(checkpoint_dir)
    if as_json:
        click.echo(json.dumps(info))
        return
    for label, value in format_summary(info):
        click.echo(f"{label:>20}  {value}")


@click.command()
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("-o", "--output", "out_dir", required=True, help="New artifact directory to write.")
@click.option(
    "--target",
    type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx"]),
    default="onnxruntime",
    show_default=True,
    help="onnxruntime: standard ops + onnxruntime's MoE node (docs/export.md). tensorrt: Mamba-2 core and MoE dispatch as plugin nodes (docs/plugins.md). tensorrt-rtx: standard ops for TensorRT for RTX.",
)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int4"]),
    default=None,
    help="Block-wise integer weights for every large matrix and the experts (onnxruntime target, float32; docs/quantization.md).",
)
@click.option(
    "--block-size",
    type=int,
    default=None,
    help="Weights per quantization scale, a power of two >= 16 that divides every layer width.  [default: 32]",
)
@click.option(
    "--kv-in-place",
    is_flag=True,
    help="Attention as onnxruntime's GroupQueryAttention: the CPU runtime appends each step's keys to one K/V buffer instead of copying the cache (faster decode at long context; onnxruntime target, float32 or quantized; docs/export.md).",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Trace every graph afresh, without the trace cache of architectures exported before (docs/export.md).",
)
@one_line_errors
def export(
    checkpoint_dir: str,
    out_dir: str,
    target: str,
    dtype: str,
    quantize: str | None,
    block_size: int | None,
    kv_in_place: bool,
    no_cache: bool,
) -> None:
    """Export a checkpoint to ONNX step graphs (prefill + decode), shared weights and a manifest."""
    require("export", "export")
    from nemotron_deploy.exporter.onnx_export import export_artifact

    path = export_artifact(
        checkpoint_dir,
        out_dir,
        target=target,
        dtype=dtype,
        quantize=quantize,
        block_size=block_size,
        trace_cache=not no_cache,
        kv_in_place=kv_in_place,
    )
    click.echo(f"wrote {path}", err=True)


@click.command()
@click.argument("artifact_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--engine",
    type=click.Choice(["tensorrt", "tensorrt-rtx"]),
    default=None,
    help="Default: the artifact's target (tensorrt or tensorrt-rtx).",
)
@click.option(
    "--plugins",
    "plugins_lib",
    type=click.Path(dir_okay=False),
    default=None,
    help="Plugin library for tensorrt-target artifacts (default: $NEMOTRON_DEPLOY_PLUGINS).",
)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None, help="Default: the export's dtype.")
@click.option("--max-batch", default=8, show_default=True, type=int, help="Largest batch the engines accept.")
@click.option("--max-seq-len", default=None, type=int, help="Largest past + new tokens (default: min(4096, max_position_embeddings)).")
@click.option(
    "--max-prefill-tokens",
    default=None,
    type=int,
    help="Largest number of new tokens per prefill call (default: min(2048, max-seq-len)); longer prompts are prefilled in pieces.",
)
@click.option("--compute-capability", default=None, help="tensorrt-rtx: build ahead of time for this GPU (e.g. 86), also without a GPU.")
@one_line_errors
def build(artifact_dir, engine, plugins_lib, precision, max_batch, max_seq_len, max_prefill_tokens, compute_capability) -> None:
    """Build TensorRT engines (.plan) for the prefill and decode graphs of an exported artifact."""
    from nemotron_deploy.exporter.engine_build import Limits, build_engines, default_engine
    from nemotron_deploy.runtime.artifact.manifest import read_manifest

    manifest = read_manifest(artifact_dir)
    engine = engine or default_engine(manifest)
    limits = Limits.default(manifest.model.max_position_embeddings, max_batch, max_seq_len, max_prefill_tokens)
    plans = build_engines(
        artifact_dir,
        engine,
        plugins=plugins_lib,
        precision=precision,
        limits=limits,
        compute_capability=compute_capability,
        progress=lambda m: click.echo(m, err=True),
    )
    for plan in plans:
        click.echo(str(plan))


COMMANDS = (inspect, export, build)  # the commands this module adds to `nemotron-deploy`
