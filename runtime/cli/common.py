"""What every command shares: one-line errors, the check that names a missing extra, the backend and cache options."""

from __future__ import annotations

import functools
import importlib.util
import sys

import click

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError

# the packages each optional extra of pyproject.toml brings, as the commands import them
EXTRAS = {
    "export": ("torch", "onnx", "onnxscript", "onnx_ir", "onnx_graphsurgeon", "tqdm", "safetensors", "tokenizers"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "triton": ("pytriton", "tritonclient", "onnxruntime", "tokenizers"),
}


EXTRA_OF_MODULE = {m: extra for extra in ("export", "onnxruntime", "triton") for m in EXTRAS[extra]}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(command: str, *extras: str) -> None:
    """One line naming the extra to install when a package `command` needs is missing."""
    for extra in extras:
        missing = [m for m in EXTRAS[extra] if not installed(m)]
        if missing:
            raise NemotronDeployError(
                f"'nemotron-deploy {command}' needs the '{extra}' extra ({missing[0]} is not installed): pip install 'nemotron-deploy[{extra}]'"
            )


def one_line_errors(fn):
    """Bad input becomes `error: <message>` on stderr and exit status 2, never a traceback; a missing
    optional package names its extra; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NemotronDeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            if root not in EXTRA_OF_MODULE:
                raise
            extra = EXTRA_OF_MODULE[root]
            click.echo(
                f"error: this command needs the '{extra}' extra ({root} is not installed): pip install 'nemotron-deploy[{extra}]'", err=True
            )
            sys.exit(2)

    return wrapper


def backend_options(fn):
    """--backend and the options of the tensorrt backend."""
    fn = click.option(
        "--plugins",
        "plugins_lib",
        type=click.Path(dir_okay=False),
        default=None,
        help="tensorrt: plugin library (default: $NEMOTRON_DEPLOY_PLUGINS, else the one recorded by `build`).",
    )(fn)
    fn = click.option(
        "--engine",
        type=click.Choice(["tensorrt", "tensorrt-rtx"]),
        default=None,
        help="tensorrt: which built engines to run (default: the first the manifest records).",
    )(fn)
    return click.option(
        "--backend",
        type=click.Choice(["onnxruntime", "tensorrt", "reference"]),
        default="onnxruntime",
        show_default=True,
        help="tensorrt: the .plan engines of `nemotron-deploy build`, on a GPU. reference: a tensorrt-target "
        "artifact on the CPU, plugin nodes run by their torch references (slow; for checks).",
    )(fn)


def cache_options(fn):
    """--cache-dir / --no-cache, handed to the command as `cache` (runtime.onnx_prepacked.CachePolicy)."""

    @functools.wraps(fn)
    def wrapper(*args, cache_dir=None, no_cache=False, **kwargs):
        from pathlib import Path

        from nemotron_deploy.runtime.onnx_prepacked import CachePolicy

        if cache_dir and no_cache:
            raise NemotronDeployError("--cache-dir and --no-cache: give one of them")
        return fn(*args, cache=CachePolicy(enabled=not no_cache, directory=Path(cache_dir) if cache_dir else None), **kwargs)

    wrapper = click.option(
        "--no-cache",
        is_flag=True,
        help="onnxruntime, quantized artifacts: pack the weights in memory in this process instead of "
        "mapping this machine's pre-packed weights cache (docs/export.md).",
    )(wrapper)
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where this machine's pre-packed weights cache lives (default: $NEMOTRON_DEPLOY_CACHE, else "
        "beside the artifact when writable, else ~/.cache/nemotron-deploy).",
    )(wrapper)


BACKEND = backend_options


CACHE = cache_options


PROVIDER = click.option(
    "--provider", "providers", multiple=True, help="onnxruntime execution provider (repeatable); default CPUExecutionProvider."
)


def backend_extras(backend: str) -> tuple[str, ...]:
    return {"onnxruntime": ("onnxruntime",), "reference": ("export",)}.get(backend, ())
