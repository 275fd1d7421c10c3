"""Configure and build the plugin library (CMake), finding or fetching TensorRT's headers.

The CUDA library (`libnemotron_deploy_plugins.so`) needs nvcc; the CPU emulation of the same kernels
(`libnemotron_deploy_plugins_emulated.so`, for tests without a GPU) needs only a C++ compiler and the
CUDA headers. Both come with `libnemotron_deploy_plugin_harness.so`, the tests' TensorRT-like driver.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.runtime.artifact.atomic import copy_file, new_directory
from nemotron_deploy.runtime.artifact.cache_folder import user_cache_folder
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError

SOURCE_DIR = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHITECTURES = "80;86;89;90"  # A100, RTX 30xx/A10, L4/RTX 40xx, H100/H200
# TensorRT 10.14's C++ headers, from PyPI (TensorRT's own wheels download from NVIDIA's index).
HEADERS_WHEEL = "kernel-lens==2.0.1"
HEADERS_IN_WHEEL = "kernel_lens/include/tensorrt/"
_SYSTEM_HEADER_DIRS = (
    "/usr/include/x86_64-linux-gnu",
    "/usr/include/aarch64-linux-gnu",
    "/usr/include",
    "/usr/local/tensorrt/include",
    "/opt/tensorrt/include",
)


class PluginBuildError(NemotronDeployError):
    """A build step failed; `log` holds the tool's whole output (the message quotes its error lines)."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class PluginBuild:
    library: Path  # the plugin library
    harness: Path  # the test driver
    emulated: bool


def library_name(emulated: bool) -> str:
    return "libnemotron_deploy_plugins_emulated.so" if emulated else "libnemotron_deploy_plugins.so"


def cache_dir() -> Path:
    return user_cache_folder()


def find_tensorrt_headers(explicit: str | Path | None = None) -> Path:
    """The directory holding NvInferRuntime.h: `explicit`, $TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include,
    a system install, or else TensorRT 10.14's headers fetched once from PyPI into the user cache."""
    candidates = [explicit, os.environ.get("TENSORRT_INCLUDE_DIR")]
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    for given in candidates:
        if given:
            if not (Path(given) / "NvInferRuntime.h").is_file():
                raise PluginBuildError(f"TensorRT include directory {given} has no NvInferRuntime.h")
            return Path(given)
    for system in _SYSTEM_HEADER_DIRS:
        if (Path(system) / "NvInferRuntime.h").is_file():
            return Path(system)
    return _fetch_headers(cache_dir() / "tensorrt-headers")


def _fetch_headers(dest: Path) -> Path:
    if (dest / "NvInferRuntime.h").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete cache (headers appear by rename, whole): fetch anew
    with tempfile.TemporaryDirectory() as tmp, new_directory(dest) as staging:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, HEADERS_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise PluginBuildError(
                f"no TensorRT headers found and `pip download {HEADERS_WHEEL}` failed: "
                f"{done.stderr.strip().splitlines()[-1:] or 'no wheel'}; pass --tensorrt-include DIR"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith(HEADERS_IN_WHEEL) and name.endswith(".h"):
                    (staging / Path(name).name).write_bytes(wheel.read(name))
        if not (staging / "NvInferRuntime.h").is_file():
            raise PluginBuildError(f"{wheels[0].name} holds no {HEADERS_IN_WHEEL}NvInferRuntime.h")
    return dest


def require_tool(name: str, hint: str) -> str:
    """The path of program `name`, or a one-line error with `hint` on how to install it."""
    path = shutil.which(name)
    if path is None:
        raise PluginBuildError(f"`{name}` not found on PATH: {hint}")
    return path


def build_plugins(
    out_dir: str | Path,
    *,
    emulated: bool = False,
    cuda_architectures: str = DEFAULT_CUDA_ARCHITECTURES,
    tensorrt_include: str | Path | None = None,
    jobs: int | None = None,
    verbose: bool = False,
) -> PluginBuild:
    """Configure and build into `out_dir`/build, then place the libraries in `out_dir` atomically."""
    bad = [a for a in cuda_architectures.split(";") if not re.fullmatch(r"\d{2,3}[af]?(-real|-virtual)?|native|all|all-major", a)]
    if bad or not cuda_architectures:
        raise PluginBuildError(
            f"--cuda-arch {cuda_architectures!r}: expected CUDA architectures like '90' or '80;86;89;90' "
            "(CMake's CUDA_ARCHITECTURES: digits, optional a/f suffix, -real/-virtual, or native)"
        )
    cmake = require_tool("cmake", "install CMake >= 3.22 (e.g. `pip install cmake`)")
    if not emulated:
        require_tool("nvcc", "install the CUDA toolkit (nvcc >= 12.0), or build the CPU emulation")
    headers = find_tensorrt_headers(tensorrt_include)
    out = Path(out_dir).resolve()
    build_dir = out / ("build-emulated" if emulated else "build")
    build_dir.mkdir(parents=True, exist_ok=True)
    configure = [
        cmake,
        "-S",
        str(SOURCE_DIR),
        "-B",
        str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DTENSORRT_INCLUDE_DIR={headers}",
        f"-DNDP_EMULATE={'ON' if emulated else 'OFF'}",
        f"-DNDP_CUDA_ARCHITECTURES={cuda_architectures}",
        f"-DPython3_EXECUTABLE={sys.executable}",  # runs contract_header.py
    ]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"] if not (build_dir / "CMakeCache.txt").exists() else []
    run_step(configure, "configuring the plugin library", verbose)
    run_step([cmake, "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 2)], "compiling the plugin library", verbose)
    placed = [copy_file(build_dir / name, out / name) for name in (library_name(emulated), "libnemotron_deploy_plugin_harness.so")]
    return PluginBuild(library=placed[0], harness=placed[1], emulated=emulated)


def run_step(cmd: list[str], what: str, verbose: bool) -> None:
    """Run one CMake step; on failure a one-line error quoting the first error lines of its output."""
    done = subprocess.run(cmd, capture_output=not verbose, text=True)
    if done.returncode != 0:
        log = (done.stdout or "") + (done.stderr or "")
        errors = [line for line in log.splitlines() if "error" in line.lower()][:5]
        raise PluginBuildError(f"{what} failed (exit {done.returncode}): " + (" | ".join(errors) or log[-400:]), log)
