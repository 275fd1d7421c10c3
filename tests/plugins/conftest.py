"""Fixtures of the plugin tests: the libraries, built once per session, and harnesses over them.

`backend` runs a test on the CPU emulation of the kernels (always, where the CUDA toolkit is present)
and on the GPU library (where a GPU is present): the same cases, the same torch references.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from nemotron_deploy.plugins.build import build_plugins
from nemotron_deploy.plugins.harness import PluginHarness

NO_NVCC = "nvcc (the CUDA toolkit) is not on PATH: the plugin library and its CPU emulation cannot be compiled"


def _require_toolkit():
    if shutil.which("nvcc") is None:
        pytest.skip(NO_NVCC)


@pytest.fixture(scope="session")
def emulated_build(tmp_path_factory):
    _require_toolkit()
    return build_plugins(tmp_path_factory.mktemp("plugins-emulated"), emulated=True)


@pytest.fixture(scope="session")
def cuda_build(tmp_path_factory):
    """The CUDA library for every architecture CI compiles; a compile error fails the test."""
    _require_toolkit()
    return build_plugins(tmp_path_factory.mktemp("plugins-cuda"), emulated=False)


@pytest.fixture(params=["emulated", "gpu"])
def backend(request):
    """(harness, device) for the CPU emulation or the GPU library."""
    if request.param == "emulated":
        build = request.getfixturevalue("emulated_build")
        return PluginHarness(build.harness, build.library), torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the GPU run of the kernels needs one (the CPU emulation ran the same cases)")
    build = request.getfixturevalue("cuda_build")
    return PluginHarness(build.harness, build.library), torch.device("cuda")
