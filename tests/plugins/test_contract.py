"""The plugin contracts (plugins/*/contract.json) against what the exporter writes and what the library does.

Every plugin node of the tiny model's tensorrt-target graphs (prefill and decode; float32, float16,
bfloat16) is handed, with its own dtypes, attributes and small concrete shapes, to the emulated plugin
library as TensorRT's builder would: the plugin must accept exactly the node's dtypes and report the
output dtypes and shapes the graph declares. A contract that disagreed with the export on one port's
dtype ("float32" where the export writes "T") fails here, as does one whose ranks or shapes do.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from nemotron_deploy.exporter.plugin_ops import PLUGIN_OPS, PluginOp
from nemotron_deploy.plugins.contract import DIMENSIONS
from nemotron_deploy.plugins.harness import PluginHarness

ONNX_TO_TORCH = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16}
OTHER_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int32]
# the graphs' symbolic dims, set small: batch 2, 3 new tokens in prefill (decode's is the constant 1), 4 past
SYMBOLS = {"prefill": dict(batch=2, new_tokens=3, past_len=4, total_len=7), "decode": dict(batch=2, new_tokens=1, past_len=4, total_len=5)}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    """dtype -> tensorrt-target artifact of the tiny random checkpoint, exported once."""
    from nemotron_deploy.exporter.onnx_export import export_artifact
    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")
    cache = {}

    def get(dtype: str) -> Path:
        if dtype not in cache:
            cache[dtype] = export_artifact(
                ckpt, tmp_path_factory.mktemp(f"tiny-{dtype}") / "onnx", target="tensorrt", dtype=dtype, progress=False
            )
        return cache[dtype]

    return get


def _dim(d, symbols: dict) -> int:
    """A concrete size for an ONNX dim: its value, or its symbolic expression (e.g. "Max(0, total_len -
    new_tokens)", as torch's exporter writes them) evaluated at `symbols`."""
    if d.HasField("dim_value"):
        return d.dim_value
    return int(eval(d.dim_param, {"__builtins__": {}}, dict(symbols, Max=max, Min=min)))


def _tensor_types(model: onnx.ModelProto, symbols: dict) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """name -> (dtype, concrete shape) of every graph input, output, value_info and initializer."""
    out = {i.name: (ONNX_TO_TORCH.get(i.data_type), tuple(i.dims)) for i in model.graph.initializer}
    for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        t = v.type.tensor_type
        out[v.name] = (ONNX_TO_TORCH.get(t.elem_type), tuple(_dim(d, symbols) for d in t.shape.dim))
    return out


def _plugin_nodes(artifact: Path, graph: str):
    from nemotron_deploy.runtime.artifact.manifest import read_manifest

    model = onnx.load(str(read_manifest(artifact).graph_path(graph)), load_external_data=False)
    types = _tensor_types(model, SYMBOLS[graph])
    nodes = [n for n in model.graph.node if n.op_type in PLUGIN_OPS and n.domain == PLUGIN_OPS[n.op_type].namespace]
    assert {n.op_type for n in nodes} == set(PLUGIN_OPS), f"{graph}: the tiny model should use every plugin"
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v for k, v in attrs.items() if k not in ("plugin_version", "plugin_namespace")}
        yield PLUGIN_OPS[node.op_type], attrs, [types[x] for x in node.input], [types[x] for x in node.output]


def _check_node(harness: PluginHarness, op: PluginOp, attrs: dict, inputs: list, outputs: list) -> None:
    plugin = harness.create(op, attrs)
    dtypes = [dtype for dtype, _ in inputs + outputs]
    for pos, port in enumerate(op.inputs + op.outputs):
        assert plugin.supports(pos, dtypes), f"{op.name}.{port.name} refuses the graph's {dtypes[pos]}"
        # the activation input picks T; every later port takes only its own dtype
        wrong = [d for d in OTHER_DTYPES if d != dtypes[pos] and (pos > 0 or d == torch.int32)]
        for other in wrong:
            changed = dtypes[:pos] + [other] + dtypes[pos + 1 :]
            assert not plugin.supports(pos, changed), f"{op.name}.{port.name} accepts {other} besides the graph's {dtypes[pos]}"
    built = plugin.build([torch.empty(shape, dtype=dtype) for dtype, shape in inputs])
    assert built.types == [dtype for dtype, _ in outputs], op.name
    assert built.shapes == [shape for _, shape in outputs], op.name


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_exported_plugin_nodes_build_in_the_library(emulated_build, tiny_artifacts, dtype):
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    for graph in ("prefill", "decode"):
        for op, attrs, inputs, outputs in _plugin_nodes(tiny_artifacts(dtype), graph):
            _check_node(harness, op, attrs, inputs, outputs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mamba2_core_reads_and_writes_the_graph_states_in_place(tiny_artifacts, dtype):
    """The states pass between steps in the dtypes the manifest declares (conv in the model dtype, SSM
    float32): Mamba2Core's state ports must be the graph's past/present tensors themselves, with no cast
    between, which holds only while the contract's state dtypes are the export's."""
    from nemotron_deploy.runtime.artifact.manifest import read_manifest

    names = [p.name for p in PLUGIN_OPS["Mamba2Core"].inputs + PLUGIN_OPS["Mamba2Core"].outputs]
    n_in = len(PLUGIN_OPS["Mamba2Core"].inputs)
    for graph in ("prefill", "decode"):
        model = onnx.load(str(read_manifest(tiny_artifacts(dtype)).graph_path(graph)), load_external_data=False)
        graph_inputs, graph_outputs = {v.name for v in model.graph.input}, {v.name for v in model.graph.output}
        for node in (n for n in model.graph.node if n.op_type == "Mamba2Core"):
            for port, kind in (("conv_state", "conv"), ("ssm_state", "ssm")):
                tensor = node.input[names.index(port)]
                assert tensor in graph_inputs and tensor.endswith(f".{kind}"), f"{graph}: {port} is {tensor}, not a past state"
                tensor = node.output[names.index(f"new_{port}") - n_in]
                assert tensor in graph_outputs and tensor.endswith(f".{kind}"), f"{graph}: new_{port} is {tensor}, not a present state"


def test_a_contract_that_disagrees_with_the_export_fails(emulated_build, tiny_artifacts):
    """The check above can fail: the float16 graph's conv_state is T, so a plugin built as if it were
    float32 (the SSM state's dtype) is refused at that port."""
    harness = PluginHarness(emulated_build.harness, emulated_build.library)
    op, attrs, inputs, outputs = next(n for n in _plugin_nodes(tiny_artifacts("float16"), "decode") if n[0].name == "Mamba2Core")
    conv_state = [p.name for p in op.inputs].index("conv_state")
    inputs[conv_state] = (torch.float32, inputs[conv_state][1])
    with pytest.raises(AssertionError, match="Mamba2Core.conv_state refuses the graph's torch.float32"):
        _check_node(harness, op, attrs, inputs, outputs)


def test_contract_shapes_use_the_legend_and_ranks_match():
    for op in PLUGIN_OPS.values():
        for port in op.inputs + op.outputs:
            assert port.rank == len(port.shape.strip("[]").split(",")), port
        assert {lim.dim for lim in op.dimension_limits} <= set(DIMENSIONS)


def io_table(op: PluginOp) -> str:
    """docs/plugins.md's tables for `op`, as the contract states them."""
    rows = [f"| {i} | {p.name} | {p.dtype} | {p.shape} | {p.meaning} |" for i, p in enumerate(op.inputs)]
    rows += [f"| → {i} | {p.name} | {p.dtype} | {p.shape} | {p.meaning} |" for i, p in enumerate(op.outputs)]
    bound = lambda v, unbounded: unbounded if v is None else f"{v:g}"  # noqa: E731
    attrs = [
        f"| {a.name} | {a.kind.upper()} | {bound(a.min, '-inf')} .. {bound(a.max, '+inf')}"
        f"{f', ≤ {a.at_most}' if a.at_most else ''} | {a.meaning} |"
        for a in op.attributes
    ]
    limits = [f"Sizes the kernels are written for: {lim.dim} {lim.min}..{lim.max} ({lim.meaning})." for lim in op.dimension_limits]
    return "\n".join(
        [
            f"**{op.name}** v{op.version}",
            "",
            "| # | port | dtype | shape | meaning |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "| attribute | kind | range | meaning |",
            "|---|---|---|---|",
            *attrs,
            *([""] + limits if limits else []),
        ]
    )


def legend_table() -> str:
    return "\n".join(["| dim | meaning |", "|---|---|", *(f"| {k} | {v} |" for k, v in DIMENSIONS.items())])


@pytest.mark.parametrize("name", sorted(PLUGIN_OPS))
def test_docs_tables_are_the_contract(name):
    text = DOCS.read_text()
    assert legend_table() in text, "docs/plugins.md's dimension legend differs from plugins/dimensions.json:\n" + legend_table()
    table = io_table(PLUGIN_OPS[name])
    assert table in text, f"docs/plugins.md's {name} tables differ from its contract.json; they should read:\n{table}"
