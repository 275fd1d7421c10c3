"""Building a pre-packed cache entry never holds the experts' repeated rows in memory (issue 31): the
builder writes them to a file first and onnxruntime maps them (runtime/repeated_rows.py). Checked
against onnxruntime building from the artifact's graph as it is: the same entry (nodes, every
initializer's bytes, every packed blob's bytes), and a build peak lower by most of the repeated bytes."""

from __future__ import annotations

import onnx
import pytest
from helpers import build_entry

from nemotron_deploy.runtime import onnx_prepacked, repeated_rows
from nemotron_deploy.runtime.artifact.manifest import read_manifest

MiB = 2**20


def test_the_build_maps_the_repeated_rows_and_saves_the_same_entry(moe_int4, tmp_path):
    graph = moe_int4 / "step.onnx"
    chains = repeated_rows.repeat_chains(onnx.load(str(graph), load_external_data=False).graph)
    assert len(chains) == 4  # per MoE layer: `up`'s integers and its scales
    repeated = sum(2 * int({e.key: e.value for e in c.stored.external_data}["length"]) for c in chains) / MiB
    assert repeated >= 40

    as_is = build_entry(graph, tmp_path / "as-is", "--as-is", "--one-session")
    written = build_entry(graph, tmp_path / "written", "--one-session")
    print(f"build peak anonymous: {as_is} MiB as is, {written} MiB with {repeated:.0f} MiB of repeated rows written out")
    assert written <= as_is - 0.7 * repeated, "the build still holds the repeated rows in memory"

    nodes, tensors = onnx_prepacked.entry_content(tmp_path / "as-is")
    assert (nodes, tensors) == onnx_prepacked.entry_content(tmp_path / "written")
    assert any(len(t[2]) > 1 for t in tensors.values() if isinstance(t, tuple)), "no packed blob compared"
    leftovers = {repeated_rows.SOURCE_FILE, repeated_rows.REPEATED_FILE} & {p.name for p in (tmp_path / "written").iterdir()}
    assert not leftovers, f"the build left {leftovers} in the entry"


def test_a_graph_without_repeated_rows_is_built_as_it_is(moe_int4, tmp_path):
    """A graph with no chain (a float artifact's, or one rewritten here without them) gives None: the
    builder opens the artifact's graph itself."""
    model = onnx.load(str(moe_int4 / "step.onnx"), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "Concat":
            node.attribute[0].i = 1  # no longer the repeat-rows form
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "step.onnx").write_bytes(model.SerializeToString())
    (plain / "weights.data").symlink_to(moe_int4 / "weights.data")
    out = tmp_path / "out"
    out.mkdir()
    assert repeated_rows.write_out(plain / "step.onnx", out) is None
    assert not list(out.iterdir())


def test_opening_without_the_cache_warns_where_onnxruntime_leaves_experts_unfolded(moe_int4, monkeypatch):
    """Opened as it is (no cache), onnxruntime does not fold a repeated tensor over its 1 GiB limit and
    that layer's experts run unpacked: one warning line says so. The limit is lowered here to the test
    model's 10 MiB tensors; the cache's build, which folds nothing itself, needs no warning."""
    import warnings

    from nemotron_deploy.runtime.session import Session

    monkeypatch.setattr(repeated_rows, "FOLD_LIMIT", 8 * MiB)
    with pytest.warns(UserWarning, match=r"does not fold 2 of QMoE's repeated expert weights.*unpacked at every step") as caught:
        Session(moe_int4, cache=onnx_prepacked.CachePolicy(enabled=False))
    assert len([w for w in caught if "folding limit" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(repeated_rows, "FOLD_LIMIT", 2**30)
        Session(moe_int4, cache=onnx_prepacked.CachePolicy(enabled=False))


def test_a_cache_on_another_filesystem_warns_where_its_build_cannot_write_the_rows_out(moe_int4, tmp_path, monkeypatch):
    """No hard link from the cache's folder to the artifact's data (another filesystem): the build opens the
    graph as it is, and where onnxruntime will not fold a repeated tensor one warning line says so. The
    limit is lowered to the test model's tensors; the hard link is made to fail in this process only (the
    builder, a child process, still links: the entry is built as usual)."""
    import os

    monkeypatch.setattr(repeated_rows, "FOLD_LIMIT", 8 * MiB)
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    with pytest.warns(UserWarning, match=r"another filesystem.*does not fold 2 of them.*unpacked"):
        onnx_prepacked.ensure_entry(read_manifest(moe_int4), "step.onnx", onnx_prepacked.CachePolicy(directory=tmp_path / "cache"))


def test_a_damaged_graph_of_the_right_size_is_named_before_a_build(moe_int4, tmp_path):
    """The build reads the graph first (its repeated rows count towards the disk it needs): a graph file
    of the recorded size and other bytes is one error naming the file, not a protobuf traceback."""
    import os
    import shutil

    from nemotron_deploy.runtime.artifact.manifest import ArtifactError

    copy = tmp_path / "artifact"
    shutil.copytree(moe_int4, copy, copy_function=os.link, ignore=shutil.ignore_patterns(".onnxruntime-cache"))
    size = (copy / "step.onnx").stat().st_size
    (copy / "step.onnx").unlink()  # a hard link of the fixture's file: replaced, not written through
    (copy / "step.onnx").write_bytes(os.urandom(size))
    with pytest.raises(ArtifactError, match=r"step.onnx: not a readable ONNX model"):
        onnx_prepacked.ensure_entry(read_manifest(copy), "step.onnx", onnx_prepacked.CachePolicy(directory=tmp_path / "cache"))
