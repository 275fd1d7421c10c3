"""`nemotron-deploy cpp build`: configure and compile the C++ runtime with CMake, against TensorRT's
headers found as the plugins find them (TensorRT itself is dlopened at run time, so no TensorRT
library is needed to build), and place the results in the output directory atomically."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.plugins.build import PluginBuildError, find_tensorrt_headers, require_tool, run_step
from nemotron_deploy.runtime.artifact.atomic import copy_file

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY = "libnemotron_deploy_runtime.so"
PRODUCTS = (LIBRARY, "nemotron-generate", "nemotron_runtime_probe")
MISSING_JSON = (
    "the C++ runtime reads manifests with nlohmann/json (>= 3.10), and CMake found no nlohmann_json package: install it "
    "(Debian/Ubuntu: apt-get install nlohmann-json3-dev; Fedora: dnf install json-devel; macOS: brew install nlohmann-json; "
    "conda: conda install -c conda-forge nlohmann_json), or add its prefix to CMAKE_PREFIX_PATH"
)


@dataclass(frozen=True)
class RuntimeBuild:
    library: Path  # libnemotron_deploy_runtime.so
    example: Path  # nemotron-generate
    probe: Path  # the tests' driver
    include: Path  # the public headers


def build_runtime(
    out_dir: str | Path, *, tensorrt_include: str | Path | None = None, jobs: int | None = None, verbose: bool = False
) -> RuntimeBuild:
    """Build into `out_dir`/build and place the library and programs in `out_dir`."""
    cmake = require_tool("cmake", "install CMake >= 3.22 (e.g. `pip install cmake`)")
    headers = find_tensorrt_headers(tensorrt_include)
    out = Path(out_dir).resolve()
    build_dir = out / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    configure = [
        cmake,
        "-S",
        str(SOURCE_DIR),
        "-B",
        str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DTENSORRT_INCLUDE_DIR={headers}",
        "-DNDR_BUILD_PROBE=ON",
    ]
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    try:
        run_step(configure, "configuring the C++ runtime", verbose)
    except PluginBuildError as e:
        if _json_not_found(e.log):
            raise PluginBuildError(MISSING_JSON, e.log) from None
        raise
    run_step([cmake, "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 2)], "compiling the C++ runtime", verbose)
    placed = {name: copy_file(build_dir / name, out / name) for name in PRODUCTS}
    return RuntimeBuild(placed[LIBRARY], placed["nemotron-generate"], placed["nemotron_runtime_probe"], SOURCE_DIR / "include")


def _json_not_found(cmake_log: str) -> bool:
    """CMake's configure output says its find_package(nlohmann_json) failed (not found, or disabled)."""
    return "find_package" in cmake_log and "nlohmann_json" in cmake_log
