"""What an artifact needs from its runtime: the onnxruntime version its ops need (an older one is refused in
one line, before loading), and a CPU provider for float16 is worth a warning."""

from __future__ import annotations

import json

import pytest

from nemotron_deploy.runtime.artifact.manifest import ArtifactError, read_manifest
from nemotron_deploy.runtime.backends.onnxruntime_backend import _check_version


def test_onnxruntime_artifact_records_its_minimum_and_older_versions_are_refused(artifacts):
    _, _, artifact = artifacts("dense_mlp_biases")
    manifest = read_manifest(artifact)
    needed = manifest.requires["onnxruntime"]
    assert manifest.opset == 23  # RMSNormalization: what makes the minimum newer than opset-18 runtimes
    _check_version(manifest, needed + ".0")
    _check_version(manifest, "2.0.0")
    major, minor = map(int, needed.split("."))
    with pytest.raises(ArtifactError, match=rf"needs onnxruntime >= {needed}.*{major}\.{minor - 1}\.1 is installed"):
        _check_version(manifest, f"{major}.{minor - 1}.1")


def test_a_damaged_requirement_is_named(artifacts, tmp_path):
    import shutil

    _, _, artifact = artifacts("dense_mlp_biases")
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["requires"] = {"onnxruntime": 132}
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"requires\.onnxruntime"):
        read_manifest(copy)


def test_float16_on_the_cpu_provider_warns(artifacts):
    from nemotron_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    _, _, artifact = artifacts("dense_mlp_biases", "float16")
    with pytest.warns(UserWarning, match="float16 artifact on onnxruntime's CPU provider decodes slower"):
        OnnxRuntimeBackend(read_manifest(artifact))
