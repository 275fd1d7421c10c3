"""The plugin library as a build artifact: it compiles with nvcc for every CI architecture, exports the
TensorRT 10 dynamic-plugin entry points, needs neither libnvinfer nor a shared cudart, and its creators
match the contract table that the exporter and the references use."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
from click.testing import CliRunner

from nemotron_deploy.exporter.plugin_ops import PLUGIN_OPS
from nemotron_deploy.plugins.build import DEFAULT_CUDA_ARCHITECTURES
from nemotron_deploy.plugins.harness import HarnessError, PluginHarness

FIELD_TYPE = {"int": "5", "float": "1"}  # nvinfer1::PluginFieldType kINT32, kFLOAT32


def _dynamic_symbols(library) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}


def _needed(library) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def test_cuda_library_compiles_for_every_ci_architecture(cuda_build):
    assert DEFAULT_CUDA_ARCHITECTURES == "80;86;89;90"
    build_rules = (cuda_build.library.parent / "build" / "build.ninja").read_text()
    for arch in ("80", "86", "89", "90"):
        assert f"sm_{arch}" in build_rules, f"sm_{arch} not compiled"


@pytest.mark.parametrize("which", ["cuda_build", "emulated_build"])
def test_entry_points_exported_and_nothing_else(request, which):
    build = request.getfixturevalue(which)
    symbols = _dynamic_symbols(build.library)
    assert {"getCreators", "setLoggerFinder"} <= symbols
    ours = {s for s in symbols if not s.startswith("_")}  # hidden visibility: only the entry points
    assert ours == {"getCreators", "setLoggerFinder"}, ours
    needed = _needed(build.library)
    assert not any("nvinfer" in lib or "cudart" in lib for lib in needed), needed


@pytest.mark.parametrize("which", ["cuda_build", "emulated_build"])
def test_creators_match_the_contract(request, which):
    """Loaded through the entry points (the CUDA library loads without a GPU: cudart is static)."""
    build = request.getfixturevalue(which)
    creators = {c["name"]: c for c in PluginHarness(build.harness, build.library).creators()}
    assert set(creators) == set(PLUGIN_OPS)
    for name, op in PLUGIN_OPS.items():
        assert (creators[name]["version"], creators[name]["namespace"]) == (op.version, op.namespace)
        assert creators[name]["fields"] == [(a.name, FIELD_TYPE[a.kind]) for a in op.attributes]


def test_cli_plugins_build_prints_the_library_path(tmp_path, emulated_build):
    from nemotron_deploy.runtime.cli import main

    result = CliRunner().invoke(main, ["plugins", "build", "-o", str(tmp_path / "lib"), "--emulate", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["library"].endswith("libnemotron_deploy_plugins_emulated.so")
    assert {"getCreators", "setLoggerFinder"} <= _dynamic_symbols(info["library"])


def test_cli_plugins_build_bad_header_dir_is_one_line(tmp_path):
    from nemotron_deploy.runtime.cli import main

    result = CliRunner().invoke(main, ["plugins", "build", "-o", str(tmp_path), "--tensorrt-include", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"error: TensorRT include directory {tmp_path} has no NvInferRuntime.h"


def test_manifest_plugin_versions_are_checked_against_the_library(emulated_build, tmp_path):
    """The check `build` and the TensorRT backend run after loading the library, here over the creators the
    library exposes through getCreators (TensorRT's registry is not available on this machine)."""
    from nemotron_deploy.plugins.tensorrt_common import TensorRTError, check_plugin_versions
    from nemotron_deploy.runtime.artifact.manifest import Manifest, PluginRecord

    creators = {(c["name"], c["version"], c["namespace"]) for c in PluginHarness(emulated_build.harness, emulated_build.library).creators()}
    find = lambda name, version, namespace: (name, version, namespace) if (name, version, namespace) in creators else None  # noqa: E731
    current = tuple(PluginRecord(op.name, op.version, op.namespace) for op in PLUGIN_OPS.values())
    check_plugin_versions(Manifest(tmp_path, plugins=current), emulated_build.library, find)
    newer = (dataclasses.replace(current[0], version="2"), current[1])
    with pytest.raises(TensorRTError, match="has no plugin Mamba2Core version 2 in namespace 'nemotron_deploy'"):
        check_plugin_versions(Manifest(tmp_path, plugins=newer), emulated_build.library, find)


def test_cli_plugins_build_bad_architecture_is_one_line(tmp_path):
    from nemotron_deploy.runtime.cli import main

    result = CliRunner().invoke(main, ["plugins", "build", "-o", str(tmp_path), "--cuda-arch", "80;abc"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --cuda-arch '80;abc': expected CUDA architectures like '90'")
    assert not (tmp_path / "build").exists()


# Each entry point's failure as the harness sees it: createPlugin / build steps / run-time plugin / enqueue
ENTRY_POINTS = [
    "createPlugin",
    "getOutputDataTypes",
    "getOutputShapes",
    "supportsFormatCombination",
    "configurePlugin",
    "getWorkspaceSize",
    "getFieldsToSerialize",
    "clone",
    "enqueue",
]


@pytest.mark.parametrize("method", ENTRY_POINTS)
def test_an_exception_in_an_entry_point_is_a_logged_error(emulated_build, monkeypatch, method):
    """The emulated library throws inside `method` when $NDP_INJECT_FAILURE names it (a test hook of the
    CPU emulation only): the plugin logs "<plugin>.<method>: injected failure" and returns its error value
    (null, -1, false, 0 bytes); nothing reaches the caller as an exception."""
    import torch

    from nemotron_deploy.exporter.plugin_ops import MOE_DISPATCH

    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    attrs = dict(top_k=2, n_group=1, topk_group=1, norm_topk_prob=1, routed_scaling_factor=1.0)
    inputs = [torch.randn(3, 8), torch.randn(3, 4), torch.zeros(4), torch.randn(4, 6, 8), torch.randn(4, 8, 6)]
    plugin = harness.create(MOE_DISPATCH, attrs)
    monkeypatch.setenv("NDP_INJECT_FAILURE", method)
    logged = f"MoeDispatch.{method}: injected failure"
    if method == "getWorkspaceSize":  # its error value, 0 bytes, is not a failure the caller can see
        assert plugin.build(inputs).workspace == 0 and logged in harness.take_log()
        return
    with pytest.raises(HarnessError, match=logged):
        harness.create(MOE_DISPATCH, attrs) if method == "createPlugin" else plugin.run(inputs)
