"""The TensorRT targets without TensorRT proper or a GPU:

- tensorrt: every Mamba2Core / MoeDispatch plugin node executed by its torch reference (onnx's
  ReferenceEvaluator) gives the same greedy tokens as the onnxruntime-target export: the wiring of every
  plugin node (inputs, attributes, outputs, state threading) is right.
- tensorrt-rtx: standard ops only; runs on onnxruntime with the same tokens, and TensorRT for RTX (a real
  ONNX parser and builder) turns it into .plan files ahead of time for SM86.
"""

import dataclasses
import json
import shutil

import onnx
import pytest
from click.testing import CliRunner
from helpers import relative_error
from hf_oracle import random_prompt

from nemotron_deploy.exporter.engine_build import Limits, build_engines
from nemotron_deploy.exporter.plugin_ops import PLUGIN_OPS
from nemotron_deploy.runtime.artifact.manifest import ArtifactError, EngineRecord, PluginRecord, read_manifest, to_json
from nemotron_deploy.runtime.cli import main
from nemotron_deploy.runtime.session import Session


def _prompts():
    return [random_prompt(n, seed) for n, seed in ((19, 7), (6, 8), (11, 9))]


def test_plugin_graph_reference_execution_equals_onnxruntime_tokens(artifacts, config_name):
    _, _, ort_artifact = artifacts(config_name)
    _, _, trt_artifact = artifacts(config_name, target="tensorrt")
    prompts = _prompts()
    want = Session(ort_artifact).generate(prompts, max_new_tokens=24, ignore_eos=True)
    reference = Session(trt_artifact, backend="reference")
    got = reference.generate(prompts, max_new_tokens=24, ignore_eos=True)
    assert got.new_token_ids == want.new_token_ids
    assert relative_error(got.prefill_logits, want.prefill_logits) < 1e-4
    # prefill in pieces (the plugin's conv and SSM states carried between calls), then decode
    chunked = reference.generate(prompts, max_new_tokens=8, ignore_eos=True, prefill_chunk_size=5)
    assert chunked.new_token_ids == [ids[:8] for ids in want.new_token_ids]


@pytest.mark.filterwarnings("ignore:.*float16 artifact on onnxruntime's CPU provider:UserWarning")  # correctness, not speed, here
def test_half_precision_plugin_graphs(artifacts):
    """float16: reference execution == the onnxruntime float16 export; bfloat16 (no onnxruntime kernels, no
    numpy type): exports with bfloat16 plugin ports, float32 states and mask where the contract says."""
    prompts = _prompts()
    _, _, ort16 = artifacts("hybrid_moe_groups", "float16")
    _, _, trt16 = artifacts("hybrid_moe_groups", "float16", target="tensorrt")
    want = Session(ort16).generate(prompts, max_new_tokens=12, ignore_eos=True)
    assert Session(trt16, backend="reference").generate(prompts, max_new_tokens=12, ignore_eos=True).new_token_ids == want.new_token_ids
    _, _, trt_bf16 = artifacts("hybrid_moe_groups", "bfloat16", target="tensorrt")
    model = onnx.load(str(read_manifest(trt_bf16).graph_path("decode")), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]}
    node = next(n for n in model.graph.node if n.op_type == "Mamba2Core")
    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    assert [types.get(name) for name in node.input[3:5]] == [bf16, f32]  # conv state in T, SSM state float32
    assert [types.get(name) for name in node.output] == [f32, bf16, f32]


def test_plugin_nodes_follow_the_contract(artifacts):
    _, _, artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    manifest = read_manifest(artifact)
    cfg = manifest.model.config
    kinds = manifest.model.layer_types
    assert manifest.plugins == tuple(PluginRecord(op.name, op.version, op.namespace) for op in PLUGIN_OPS.values())
    for graph, dt_min in (("prefill", cfg["time_step_min"]), ("decode", 0.0)):
        model = onnx.load(str(manifest.graph_path(graph)), load_external_data=False)
        assert not model.functions
        nodes = [n for n in model.graph.node if n.domain == "nemotron_deploy"]
        assert sorted(n.op_type for n in nodes) == sorted(["Mamba2Core"] * kinds.count("mamba") + ["MoeDispatch"] * kinds.count("moe"))
        for node in nodes:
            op = PLUGIN_OPS[node.op_type]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.pop("plugin_version") == b"1" and attrs.pop("plugin_namespace") == b"nemotron_deploy"
            assert set(attrs) == {a.name for a in op.attributes}
            assert (len(node.input), len(node.output)) == (len(op.inputs), len(op.outputs))
            if node.op_type == "Mamba2Core":
                assert attrs["chunk_size"] == cfg["chunk_size"] and attrs["head_dim"] == cfg["mamba_head_dim"]
                assert attrs["dt_min"] == pytest.approx(dt_min) and attrs["dt_max"] == float("inf")
            else:
                assert (attrs["top_k"], attrs["n_group"], attrs["topk_group"]) == (
                    cfg["num_experts_per_tok"],
                    cfg["n_group"],
                    cfg["topk_group"],
                )
        counts = {p.name: p.nodes for p in manifest.graph(graph).plugins}
        assert counts == {"Mamba2Core": kinds.count("mamba"), "MoeDispatch": kinds.count("moe")}


def test_onnxruntime_refuses_a_plugin_artifact(artifacts):
    _, _, artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    result = CliRunner().invoke(main, ["generate", str(artifact), "--prompt-ids", "1,2,3"])
    assert result.exit_code == 2
    assert "plugin nodes (Mamba2Core, MoeDispatch) cannot run on onnxruntime; use --backend tensorrt" in result.output


@pytest.mark.parametrize("name", ["hybrid_moe_groups", "latent_moe_tied_odd"])
def test_tensorrt_rtx_target_runs_on_onnxruntime_with_the_same_tokens(artifacts, name):
    """Its prefill MoE is the dense formulation (no NonZero): same tokens as the per-expert loop."""
    _, _, ort_artifact = artifacts(name)
    _, _, rtx_artifact = artifacts(name, target="tensorrt-rtx")
    ops = {n.op_type for n in onnx.load(str(read_manifest(rtx_artifact).graph_path("prefill")), load_external_data=False).graph.node}
    assert "NonZero" not in ops and not any(op in PLUGIN_OPS for op in ops)
    prompts = _prompts()
    want = Session(ort_artifact).generate(prompts, max_new_tokens=24, ignore_eos=True)
    got = Session(rtx_artifact).generate(prompts, max_new_tokens=24, ignore_eos=True)
    assert got.new_token_ids == want.new_token_ids
    assert relative_error(got.prefill_logits, want.prefill_logits) < 1e-4


@pytest.fixture(scope="module")
def rtx_built(artifacts, tmp_path_factory):
    """A tensorrt-rtx artifact with .plan engines for SM86, built here without a GPU."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (pip install tensorrt-rtx-cu13) is not installed")
    _, _, artifact = artifacts("hybrid_moe_groups", target="tensorrt-rtx")
    copy = tmp_path_factory.mktemp("rtx-built") / "artifact"
    shutil.copytree(artifact, copy)
    messages = []
    plans = build_engines(copy, "tensorrt-rtx", compute_capability="86", limits=Limits(4, 128, 64), progress=messages.append)
    return copy, plans, messages


def test_tensorrt_rtx_builds_plans_without_a_gpu(rtx_built):
    artifact, plans, messages = rtx_built
    assert [p.name for p in plans] == ["prefill.tensorrt-rtx.plan", "decode.tensorrt-rtx.plan"]
    assert all(p.stat().st_size > 100_000 for p in plans)
    manifest = read_manifest(artifact)  # re-checks every file it lists, the plans included
    record = manifest.engines["tensorrt-rtx"]
    assert record.compute_capability == "86" and record.max_batch == 4 and record.max_seq_len == 128
    assert record.graphs["decode"].profile["input_ids"] == [[1, 1], [2, 1], [4, 1]]
    assert record.graphs["prefill"].profile["attention_mask"][2] == [4, 128]
    assert (artifact / "tensorrt-rtx.timing.cache").is_file()
    assert any("built prefill.tensorrt-rtx.plan" in m for m in messages)
    assert not list(artifact.glob(".*.partial"))
    assert to_json(manifest) == json.loads((artifact / "manifest.json").read_text())  # engines typed, nothing lost


def test_build_cli_tensorrt_rtx_and_its_errors(rtx_built, tmp_path):
    artifact, _, _ = rtx_built
    runner = CliRunner()
    out = runner.invoke(
        main,
        [
            "build",
            str(artifact),
            "--engine",
            "tensorrt-rtx",
            "--compute-capability",
            "89",
            "--max-batch",
            "2",
            "--max-seq-len",
            "64",
            "--max-prefill-tokens",
            "32",
        ],
    )
    assert out.exit_code == 0, out.output
    assert out.output.strip().splitlines()[-1].endswith("decode.tensorrt-rtx.plan")
    assert read_manifest(artifact).engines["tensorrt-rtx"].compute_capability == "89"
    bad = runner.invoke(main, ["build", str(artifact), "--engine", "tensorrt-rtx", "--compute-capability", "90"])
    assert bad.exit_code == 2 and "--compute-capability 90: tensorrt-rtx" in bad.output and "SM86" in bad.output
    bad = runner.invoke(main, ["build", str(artifact), "--engine", "tensorrt-rtx", "--precision", "fp16"])
    assert bad.exit_code == 2 and "TensorRT for RTX takes the precision of the graph; re-export with --dtype float16" in bad.output
    bad = runner.invoke(main, ["build", str(artifact), "--engine", "tensorrt-rtx", "--max-seq-len", "100000"])
    assert bad.exit_code == 2 and "max_position_embeddings is 512" in bad.output


def test_plan_of_another_tensorrt_version_is_refused(rtx_built):
    artifact, _, _ = rtx_built
    raw = json.loads((artifact / "manifest.json").read_text())
    raw["engines"]["tensorrt-rtx"]["version"] = "1.0.0.1"
    (artifact / "manifest.json").write_text(json.dumps(raw))
    try:
        result = CliRunner().invoke(main, ["generate", str(artifact), "--backend", "tensorrt", "--prompt-ids", "1,2"])
        assert result.exit_code == 2
        assert "prefill.tensorrt-rtx.plan: built with TensorRT 1.0.0.1, this is 1.7" in result.output
        assert "rebuild with `nemotron-deploy build`" in result.output
    finally:
        raw["engines"]["tensorrt-rtx"]["version"] = __import__("tensorrt_rtx").__version__
        (artifact / "manifest.json").write_text(json.dumps(raw))


def test_plan_for_another_gpu_is_refused(tmp_path):
    from nemotron_deploy.runtime.backends.tensorrt_backend import check_gpu

    record = EngineRecord("10.14", "float16", "86", None, 8, 4096, 2048, None, {})
    with pytest.raises(ArtifactError, match=r"built for compute capability 86, this GPU \(NVIDIA H100\) is 90; rebuild"):
        check_gpu(record, "90", "NVIDIA H100", tmp_path / "decode.tensorrt.plan")
    check_gpu(record, "86", "NVIDIA A10", tmp_path / "decode.tensorrt.plan")  # the same architecture passes
    check_gpu(dataclasses.replace(record, compute_capability="native", built_on="90"), "90", "NVIDIA H100", tmp_path / "x.plan")


def test_tensorrt_backend_and_build_errors_without_tensorrt(artifacts, tmp_path):
    _, _, trt_artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    _, _, rtx_artifact = artifacts("hybrid_moe_groups", target="tensorrt-rtx")
    runner = CliRunner()
    no_engines = runner.invoke(main, ["generate", str(trt_artifact), "--backend", "tensorrt", "--prompt-ids", "1,2"])
    assert no_engines.exit_code == 2
    assert f"{trt_artifact}: no TensorRT engines; build them first: nemotron-deploy build" in no_engines.output
    no_plugins = runner.invoke(main, ["build", str(trt_artifact), "--engine", "tensorrt"], env={"NEMOTRON_DEPLOY_PLUGINS": ""})
    assert no_plugins.exit_code == 2 and "its graphs use plugins (Mamba2Core v1, MoeDispatch v1); pass --plugins PATH" in no_plugins.output
    missing = runner.invoke(main, ["build", str(trt_artifact), "--plugins", str(tmp_path / "nope.so")])
    assert missing.exit_code == 2 and f"plugin library {tmp_path / 'nope.so'}: no such file" in missing.output
    wrong_target = runner.invoke(main, ["build", str(trt_artifact), "--engine", "tensorrt-rtx"])
    assert wrong_target.exit_code == 2 and "re-export with --target tensorrt-rtx" in wrong_target.output
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT proper is installed here: its missing-package error cannot be shown")
    except ImportError:
        pass
    no_trt = runner.invoke(main, ["build", str(rtx_artifact), "--engine", "tensorrt"])
    assert no_trt.exit_code == 2
    assert no_trt.output.strip().splitlines()[-1] == (
        "error: --engine tensorrt needs the Python package 'tensorrt', which is not installed: "
        "pip install tensorrt-cu13 (or tensorrt-cu12; from NVIDIA's index https://pypi.nvidia.com)"
    )
