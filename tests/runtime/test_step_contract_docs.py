"""docs/step-contract.md's input and output tables against the manifests of real exports: every graph
tensor is a row of the tables with the row's dtype and shape, and every row is some graph's tensor.

The sizes are the checkpoint's, read from transformers' config (the oracle), not from the exporter.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nemotron_deploy.runtime.artifact.manifest import read_manifest

DOC = Path(__file__).resolve().parents[2] / "docs" / "step-contract.md"
SYMBOLS = {"batch", "new_tokens", "past_len", "total_len"}  # dims the manifest keeps as names
# (config name, target, dtype): P != N (6, 5), so the two SSM layouts differ; one step.onnx, two graphs on the others
EXPORTS = [("latent_moe_tied_odd", "onnxruntime", "float32"), ("latent_moe_tied_odd", "tensorrt", "float16")]


def table(section: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table under `## section`."""
    text = DOC.read_text().split(f"## {section}\n", 1)[1]
    rows = [line for line in text.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def name_patterns(cell: str) -> list[re.Pattern]:
    """`past.{i}.key` / `past.{i}.value` -> patterns matching past.3.key and past.3.value."""
    return [re.compile(re.escape(name).replace(r"\{i\}", r"\d+") + "$") for name in re.findall(r"`([^`]+)`", cell)]


def shapes(cell: str) -> list[list[str]]:
    """The cell's `[a, b, ...]` shapes, as lists of dims."""
    return [[dim.strip() for dim in shape.split(",")] for shape in re.findall(r"`\[([^\]]*)\]`", cell)]


def sizes(config) -> dict[str, int]:
    """The tables' size names, from transformers' config of the checkpoint."""
    inner = config.mamba_num_heads * config.mamba_head_dim
    return {
        "conv_dim": inner + 2 * config.n_groups * config.ssm_state_size,
        "conv_kernel-1": config.conv_kernel - 1,
        "H": config.mamba_num_heads,
        "P": config.mamba_head_dim,
        "N": config.ssm_state_size,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab": config.vocab_size,
        "1": 1,
    }


def resolve(shape: list[str], known: dict[str, int], decode: bool = False) -> list:
    """Sizes for the size names; a separate decode graph has new_tokens fixed at 1 (the doc says so)."""
    fixed = {"new_tokens": 1} if decode else {}
    return [fixed.get(dim, dim) if dim in SYMBOLS else known[dim] for dim in shape]


def dtype_of(cell: str, artifact_dtype: str) -> str:
    if cell == "model":
        return artifact_dtype
    if cell.startswith("`mamba_ssm_cache_dtype`"):
        return "float32"  # transformers' default, which every test checkpoint keeps
    return cell


@pytest.mark.parametrize("name,target,dtype", EXPORTS)
def test_every_graph_input_is_a_row_of_the_inputs_table(artifacts, name, target, dtype):
    ref, _, artifact = artifacts(name, dtype, target)
    manifest, known = read_manifest(artifact), sizes(ref.config)
    rows = table("Inputs")
    for kind, graph in manifest.graphs.items():
        step = graph.file == "step.onnx"  # the onnxruntime target's one graph keeps the SSM state as [batch, H, N, P]
        for spec in graph.inputs:
            row = next((r for r in rows if any(p.match(spec.name) for p in name_patterns(r[0]))), None)
            assert row is not None, f"{spec.name}: no row of docs/step-contract.md's inputs table"
            options = shapes(row[2])
            want = options[1] if len(options) > 1 and step else options[0]
            assert list(spec.shape) == resolve(want, known, decode=kind == "decode" and not step), (graph.file, spec.name)
            assert spec.dtype == dtype_of(row[1], manifest.dtype), (graph.file, spec.name)


def test_every_row_of_the_inputs_table_is_some_graph_input(artifacts):
    names = set()
    for name, target, dtype in EXPORTS:
        manifest = read_manifest(artifacts(name, dtype, target)[2])
        names |= {spec.name for graph in manifest.graphs.values() for spec in graph.inputs}
    for row in table("Inputs"):
        for pattern in name_patterns(row[0]):
            assert any(pattern.match(n) for n in names), f"docs/step-contract.md row {row[0]}: no graph has such an input"


@pytest.mark.parametrize("name,target,dtype", EXPORTS)
def test_outputs_are_the_logits_and_a_present_for_each_past(artifacts, name, target, dtype):
    ref, _, artifact = artifacts(name, dtype, target)
    manifest, known = read_manifest(artifact), sizes(ref.config)
    logits_row, present_row = table("Outputs")
    assert logits_row[0] == "`logits`" and present_row[0] == "`present.{i}.*`"
    for graph in manifest.graphs.values():
        inputs = {spec.name: spec for spec in graph.inputs}
        for spec in graph.outputs:
            if spec.name == "logits":
                assert spec.dtype == logits_row[1] and list(spec.shape) == resolve(shapes(logits_row[2])[0], known)
                continue
            past = inputs[spec.name.replace("present.", "past.", 1)]  # "as the inputs"
            want = ["total_len" if dim == "past_len" else dim for dim in past.shape]  # "K/V with total_len"
            assert (spec.dtype, list(spec.shape)) == (past.dtype, want), (graph.file, spec.name)
        assert len(graph.outputs) == 1 + len(inputs) - 2  # logits, and one present per past
