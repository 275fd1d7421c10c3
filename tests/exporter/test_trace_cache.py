"""The trace cache (exporter/trace_cache.py): an architecture exported before is not traced again, and
the artifact is the same, byte for byte, as one traced afresh; a fine-tuned checkpoint (same config,
other weights) takes the graphs and binds its own weights; another config, dtype or target is another
entry; a damaged entry is traced again with a warning; a cache that is off or cannot be written changes
nothing but the time."""

import filecmp
import json
import os
from pathlib import Path

import pytest

from nemotron_deploy.exporter import onnx_export
from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.runtime.artifact.cache_folder import CACHE_ENV

SMALL = dict(TINY_CONFIG, hybrid_override_pattern="ME*M")  # the demo's widths, which int4 blocks of 32 divide


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "traces"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two checkpoints of one architecture, other weights (a model and its fine-tuned self), and a third of another."""
    root = tmp_path_factory.mktemp("trace-cache")
    return (
        write_random_checkpoint(root / "base", config=SMALL, seed=1),
        write_random_checkpoint(root / "tuned", config=SMALL, seed=2),
        write_random_checkpoint(root / "other", config=dict(SMALL, hybrid_override_pattern="M*E"), seed=1),
    )


def _no_tracing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("traced, though the trace cache has the graph")

    monkeypatch.setattr(onnx_export, "finished_graph", refuse)
    monkeypatch.setattr(onnx_export, "BackgroundTrace", refuse)


def assert_same_artifact(a: Path, b: Path) -> None:
    """Every file byte-identical; the manifest's too, but for its creation time."""
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):
        if name == "manifest.json":
            load = lambda d: {**json.loads((d / name).read_text()), "exporter": None}  # noqa: E731
            assert load(a) == load(b)
        else:
            assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.parametrize("target,dtype,quantize", [("onnxruntime", "float32", "int4"), ("tensorrt", "float16", None)])
def test_a_second_export_traces_nothing_and_writes_the_same_bytes(checkpoints, cache, tmp_path, monkeypatch, target, dtype, quantize):
    base, tuned, _ = checkpoints
    options = dict(target=target, dtype=dtype, quantize=quantize, block_size=16 if quantize else None, progress=False)
    fresh = export_artifact(base, tmp_path / "fresh", **options, trace_cache=False)
    assert not cache.exists()  # off: nothing written
    first = export_artifact(base, tmp_path / "first", **options)
    assert len(os.listdir(cache)) == len(onnx_export.traced_graphs(target, dtype))
    with monkeypatch.context() as patched:
        _no_tracing(patched)
        again = export_artifact(base, tmp_path / "again", **options)
        tuned_cached = export_artifact(tuned, tmp_path / "tuned-cached", **options)
    for artifact in (first, again):
        assert_same_artifact(fresh, artifact)
    assert_same_artifact(export_artifact(tuned, tmp_path / "tuned-fresh", **options, trace_cache=False), tuned_cached)
    assert not filecmp.cmp(fresh / "weights.data", tuned_cached / "weights.data", shallow=False)  # its own weights


def test_another_architecture_is_another_entry_and_damage_is_traced_again(checkpoints, cache, tmp_path):
    base, _, other = checkpoints
    fresh = export_artifact(other, tmp_path / "fresh", progress=False, trace_cache=False)
    export_artifact(base, tmp_path / "base", progress=False)
    export_artifact(other, tmp_path / "other", progress=False)
    entries = sorted(os.listdir(cache))
    assert len(entries) == 2
    for entry in entries:
        (cache / entry / "graph.onnx").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match=r"trace cache entry .* is damaged .*; tracing again"):
        again = export_artifact(other, tmp_path / "again", progress=False)
    assert_same_artifact(fresh, again)
    assert len(os.listdir(cache)) == 2  # the damaged entry of `other` written anew beside `base`'s


def test_a_cache_that_cannot_be_written_changes_nothing_but_the_time(checkpoints, tmp_path, monkeypatch):
    base, _, _ = checkpoints
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file"))
    fresh = export_artifact(base, tmp_path / "fresh", progress=False, trace_cache=False)
    with pytest.warns(UserWarning, match=r"trace cache .* cannot be written .*; exporting without it"):
        assert_same_artifact(fresh, export_artifact(base, tmp_path / "unwritable", progress=False))
    monkeypatch.setenv(CACHE_ENV, "none")
    assert_same_artifact(fresh, export_artifact(base, tmp_path / "off", progress=False))
