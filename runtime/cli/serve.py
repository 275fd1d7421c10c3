"""`triton`, `serve`: a Triton model repository of an artifact, and a running server with the OpenAI endpoints."""

from __future__ import annotations

import click

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.cli.common import CACHE, one_line_errors, require


def _repository_options(fn):
    """Options shared by `triton` and `serve`: how the generate model runs inside the server."""
    for option in reversed(
        [
            click.option(
                "--instances",
                type=click.IntRange(1),
                default=1,
                show_default=True,
                help="Model instances, each a process with its own running batch.",
            ),
            click.option(
                "--max-batch",
                type=click.IntRange(1),
                default=8,
                show_default=True,
                help="generate: sequences decoded together per instance (more wait). step: steps Triton may batch together.",
            ),
            click.option(
                "--backend",
                type=click.Choice(["onnxruntime", "tensorrt"]),
                default=None,
                help="Runtime backend of the generate model.  [default: tensorrt when the artifact has engines, else onnxruntime]",
            ),
            click.option(
                "--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads per instance (default: all cores)."
            ),
            click.option(
                "--prefill-chunk",
                type=click.IntRange(1),
                default=256,
                show_default=True,
                help="generate: prompt tokens per prefill call; running sequences decode between a long prompt's chunks.",
            ),
            click.option(
                "--prefix-cache-mb",
                type=click.FloatRange(0),
                default=None,
                help="generate: MiB per instance of state snapshots kept so that a prompt that begins with an earlier one "
                "(a conversation's turns) is prefilled only from there; 0 turns it off.  "
                "[default: min(1024, 1/16 of the serving machine's memory)]",
            ),
        ]
    ):
        fn = option(fn)
    return fn


@click.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("-o", "--output", "out_dir", required=True, help="New model repository directory to write.")
@click.option(
    "--kind",
    type=click.Choice(["generate", "step"]),
    default="generate",
    show_default=True,
    help="generate: our runtime in Triton's Python backend, streaming, continuous batching, TensorRT-LLM's request names. "
    "step: the step graph for Triton's onnxruntime / tensorrt backend with implicit state (docs/triton.md).",
)
@_repository_options
@one_line_errors
@CACHE
def triton(artifact_dir, out_dir, kind, instances, max_batch, backend, threads, prefill_chunk, prefix_cache_mb, cache) -> None:
    """Write a Triton Inference Server model repository for an artifact."""
    require("triton", "triton")
    from nemotron_deploy.runtime.serving.triton.repository import write_repository

    repo = write_repository(
        artifact_dir,
        out_dir,
        kind=kind,
        instances=instances,
        max_batch=max_batch,
        backend=backend,
        threads=threads,
        prefill_chunk=prefill_chunk,
        cache=cache,
        prefix_cache_mb=prefix_cache_mb,
    )
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    click.echo(f"wrote {repo}: {', '.join(models)}")
    if kind == "generate":
        click.echo(f"serve it: nemotron-deploy serve {artifact_dir}   (or tritonserver --model-repository={repo}, docs/triton.md)")
    elif (repo / "nemotron_step" / "1" / "model.plan").is_file():
        from nemotron_deploy.runtime.artifact.manifest import read_manifest

        built = read_manifest(artifact_dir).engines["tensorrt"].plugins or {}
        library = built.get("library") or "libnemotron_deploy_plugins.so"
        click.echo(
            f"serve it with Triton's tensorrt backend, loading the plugins: tritonserver --model-repository={repo} "
            f"--backend-config=tensorrt,plugins={library}   (docs/triton.md; not run here)"
        )
    else:
        click.echo(f"serve it with Triton's onnxruntime backend: tritonserver --model-repository={repo}   (docs/triton.md; not run here)")


@click.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option(
    "--openai-port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="The OpenAI-compatible endpoints (/v1/chat/completions, ...; docs/openai.md).",
)
@click.option("--served-model-name", default=None, help="The `model` OpenAI clients send (default: the artifact directory's name).")
@_repository_options
@one_line_errors
@CACHE
def serve(
    artifact_dir,
    host,
    http_port,
    grpc_port,
    metrics_port,
    openai_port,
    served_model_name,
    instances,
    max_batch,
    backend,
    threads,
    prefill_chunk,
    prefix_cache_mb,
    cache,
) -> None:
    """Serve an artifact from a real tritonserver (the nvidia-pytriton wheel's), with OpenAI-compatible
    endpoints beside it, until Ctrl-C.

    Builds a `generate` repository in a temporary directory; Triton's log goes to stderr.
    """
    require("serve", "triton")
    import shutil
    import signal
    from pathlib import Path

    from nemotron_deploy.runtime.serving.openai_api.app import model_info
    from nemotron_deploy.runtime.serving.openai_api.server import OpenAIServer
    from nemotron_deploy.runtime.serving.triton.repository import write_repository
    from nemotron_deploy.runtime.serving.triton.server import TritonServer, owned_temp_dir, remove_stale_temp_dirs

    def stop(signum, frame):
        raise KeyboardInterrupt

    # explicitly, SIGINT too: a shell starts background jobs with SIGINT ignored, and Python would then
    # never raise KeyboardInterrupt (uvicorn installs its own while it runs, and restores these)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    name = served_model_name or Path(artifact_dir).resolve().name
    info = model_info(artifact_dir, name)
    web = OpenAIServer(info, host, openai_port)  # checks the port before Triton starts
    remove_stale_temp_dirs()  # of servers killed before they could clean up
    tmp = owned_temp_dir("repository")
    try:
        repo = write_repository(
            artifact_dir,
            tmp / "repository",
            instances=instances,
            max_batch=max_batch,
            backend=backend,
            threads=threads,
            prefill_chunk=prefill_chunk,
            cache=cache,
            prefix_cache_mb=prefix_cache_mb,
        )
        server = TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, log_file="-")
        try:
            with server:
                e = server.endpoints
                click.echo(
                    f"serving {artifact_dir}: gRPC {e.grpc_url}, HTTP http://{e.http_url}, metrics {e.metrics_url}; "
                    "models tensorrt_llm (ids)"
                    + (" and ensemble (text)" if (repo / "ensemble").is_dir() else "")
                    + f"; OpenAI API http://{host}:{openai_port}/v1 (model '{name}'); Ctrl-C stops",
                    err=True,
                )
                code = web.run(e.grpc_url, server.process)  # until Ctrl-C / SIGTERM, or Triton exits
                if code is not None:
                    raise NemotronDeployError(f"tritonserver exited with status {code}")
        except KeyboardInterrupt:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo("stopped", err=True)


COMMANDS = (triton, serve)  # the commands this module adds to `nemotron-deploy`
