"""`plugins build`, `cpp build`: the TensorRT plugin library and the C++ runtime, compiled with CMake."""

from __future__ import annotations

import json

import click

from nemotron_deploy.runtime.cli.common import one_line_errors


@click.group()
def plugins() -> None:
    """The TensorRT plugin library (Mamba2Core, MoeDispatch)."""


@plugins.command("build")
@click.option(
    "-o", "--output", "out_dir", default="nemotron-plugins", show_default=True, help="Directory for the library (and its CMake build tree)."
)
@click.option(
    "--cuda-arch", "cuda_arch", default=None, help="CUDA architectures, e.g. '90' or '80;86;89;90' (default: the four CI compiles)."
)
@click.option(
    "--tensorrt-include",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory holding NvInferRuntime.h (default: $TENSORRT_INCLUDE_DIR, a system install, or TensorRT 10.14's headers from PyPI).",
)
@click.option(
    "--emulate", is_flag=True, help="Build the CPU emulation of the kernels (for tests without a GPU) instead of the CUDA library."
)
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Show CMake's and the compilers' output.")
@one_line_errors
def plugins_build(out_dir, cuda_arch, tensorrt_include, emulate, as_json, verbose) -> None:
    """Configure and compile the plugin library with CMake; prints the library's path (load it with
    `trtexec --dynamicPlugins=PATH`, IPluginRegistry::loadLibrary, or `build --plugins PATH`)."""
    from nemotron_deploy.plugins.build import DEFAULT_CUDA_ARCHITECTURES, build_plugins

    if not as_json:
        click.echo("building the plugin library (first build: about a minute) ...", err=True)
    built = build_plugins(
        out_dir,
        emulated=emulate,
        cuda_architectures=cuda_arch or DEFAULT_CUDA_ARCHITECTURES,
        tensorrt_include=tensorrt_include,
        verbose=verbose,
    )
    if as_json:
        click.echo(json.dumps({"library": str(built.library), "harness": str(built.harness), "emulated": built.emulated}))
    else:
        click.echo(str(built.library))


@click.group()
def cpp() -> None:
    """The C++ runtime (libnemotron_deploy_runtime.so, nemotron-generate): docs/cpp.md."""


@cpp.command("build")
@click.option(
    "-o",
    "--output",
    "out_dir",
    default="nemotron-cpp",
    show_default=True,
    help="Directory for the library, the programs and the CMake build tree.",
)
@click.option(
    "--tensorrt-include",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory holding NvInferRuntime.h (found as for `plugins build`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Show CMake's and the compiler's output.")
@one_line_errors
def cpp_build(out_dir, tensorrt_include, as_json, verbose) -> None:
    """Configure and compile the C++ runtime library and the example program with CMake."""
    from nemotron_deploy.runtime.cpp.build import build_runtime

    if not as_json:
        click.echo("building the C++ runtime (about half a minute) ...", err=True)
    built = build_runtime(out_dir, tensorrt_include=tensorrt_include, verbose=verbose)
    paths = {"library": str(built.library), "example": str(built.example), "probe": str(built.probe), "include": str(built.include)}
    if as_json:
        click.echo(json.dumps(paths))
    else:
        click.echo(f"{built.library}\n{built.example}\nheaders: {built.include}")


COMMANDS = (plugins, cpp)  # the commands this module adds to `nemotron-deploy`
