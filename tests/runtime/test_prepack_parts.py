"""A pre-packed cache entry built part by part (runtime/prepack_parts.py, issue 31): the build holds one
part's packed weights at a time, not all of them, and saves the entry one session would (nodes, every
initializer's bytes, every packed blob's bytes); an artifact served from it gives the tokens of one packed
in memory; a graph that cannot be cut is built in one session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import build_entry
from onnx import TensorProto, helper, numpy_helper

from nemotron_deploy.runtime import onnx_prepacked, prepack_parts
from nemotron_deploy.runtime.artifact.manifest import read_manifest
from nemotron_deploy.runtime.session import Session

MiB = 2**20


def _packed_sizes(entry) -> list[int]:
    """Per packed initializer of the entry, the bytes of its packed blobs."""
    model = onnx_prepacked.load_model(entry / onnx_prepacked.MODEL_FILE)
    sizes = []
    for tensor in model.graph.initializer:
        blobs = [e.value for e in tensor.external_data if e.key.startswith("prepacked")]
        if blobs:
            sizes.append(sum(int(b.split(";")[1]) for value in blobs for b in value.split("|")[1:]))
    return sizes


def test_packing_part_by_part_holds_one_part_and_saves_the_same_entry(moe_int4, tmp_path):
    graph = moe_int4 / "step.onnx"
    one = build_entry(graph, tmp_path / "one-session", "--one-session")
    parts = build_entry(graph, tmp_path / "parts", "--part-mib", "4")
    sizes = _packed_sizes(tmp_path / "one-session")
    packed, largest = sum(sizes) / MiB, max(sizes) / MiB
    print(f"build peak anonymous: {one} MiB in one session, {parts} MiB in parts ({packed:.0f} MiB packed, largest {largest:.0f})")
    assert packed - largest >= 40  # what one session holds beyond the largest part
    assert parts <= one - 0.6 * (packed - largest), "the build still holds every part's packed weights at once"

    nodes, tensors = onnx_prepacked.entry_content(tmp_path / "one-session")
    assert (nodes, tensors) == onnx_prepacked.entry_content(tmp_path / "parts")
    assert sum(len(t[2]) > 1 for t in tensors.values() if isinstance(t, tuple)) == len(sizes) >= 8, "packed blobs not compared"
    leftovers = {prepack_parts.PART_FILE, prepack_parts.PART_SAVED, prepack_parts.PART_DATA} & {
        p.name for p in (tmp_path / "parts").iterdir()
    }
    assert not leftovers, f"the build left {leftovers} in the entry"


def test_an_artifact_served_from_an_entry_built_in_parts_generates_as_packed_in_memory(moe_int4, tmp_path):
    manifest = read_manifest(moe_int4)
    key = onnx_prepacked.cache_key(manifest, "step.onnx")
    (tmp_path / "cache").mkdir()
    onnx_prepacked._build(manifest, "step.onnx", tmp_path / "cache" / f"step-{key}", key, ("--part-mib", "2"))
    prompt = [[5, 17, 42, 9, 3, 11, 200, 7]]
    cached = Session(moe_int4, cache=onnx_prepacked.CachePolicy(directory=tmp_path / "cache"))
    in_memory = Session(moe_int4, cache=onnx_prepacked.CachePolicy(enabled=False))
    got = cached.generate(prompt, 8, ignore_eos=True).new_token_ids
    assert got == in_memory.generate(prompt, 8, ignore_eos=True).new_token_ids
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [f"step-{key}"], "the entry built in parts was not used"


def _graph_with_a_subgraph(folder):
    """A float MatMul (onnxruntime packs its weight) beside an If whose branches hold subgraphs, weights in
    folder/weights.data."""
    weight = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    branch = [
        helper.make_graph(
            [helper.make_node("Identity", ["y"], [f"out_{b}"])], b, [], [helper.make_tensor_value_info(f"out_{b}", TensorProto.FLOAT, None)]
        )
        for b in ("then", "else")
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["z"], then_branch=branch[0], else_branch=branch[1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[weight, numpy_helper.from_array(np.float32(0), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "step.onnx"), save_as_external_data=True, location="weights.data", size_threshold=1024)
    return folder / "step.onnx"


def test_a_graph_with_subgraphs_is_packed_in_one_session(tmp_path):
    (tmp_path / "art").mkdir()
    graph = _graph_with_a_subgraph(tmp_path / "art")
    (tmp_path / "probe").mkdir()
    with pytest.raises(prepack_parts.PartsUnsupported, match="subgraph"):
        prepack_parts.save_in_parts(graph, tmp_path / "probe", "model.onnx", "model.data", 1024)
    assert not list((tmp_path / "probe").iterdir()), "nothing is written before the refusal"
    build_entry(graph, tmp_path / "entry")  # the builder falls back to one session
    assert len(_packed_sizes(tmp_path / "entry")) == 1  # the MatMul's weight, packed by the one session
