"""`nemotron-deploy triton` repositories: every config.pbtxt parses with Triton's own ModelConfig protobuf
(tritonclient's), and the `step` model's names, dtypes and dims match its ONNX graph and avoid the
known traps of implicit state. (Triton's onnxruntime / tensorrt backends are not installable here:
the step repository is checked, not served.)"""

import pytest
from helpers import assert_one_line_error, run_cli
from manifest_mutations import engine_record

from nemotron_deploy.runtime.serving.triton import configs
from nemotron_deploy.runtime.serving.triton.interface import GENERATE_INPUTS, TEXT_INPUTS, TEXT_TO_GENERATE

ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 7: "TYPE_INT64"}


def _parse(model_dir):
    return configs.parse((model_dir / "config.pbtxt").read_text())


def _graph_io(path):
    """name -> (Triton dtype name, dims) of the ONNX graph's inputs and outputs, symbolic dims as -1."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for value in [*graph.input, *graph.output]:
        t = value.type.tensor_type
        out[value.name] = (ONNX_TYPES[t.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim])
    return out


@pytest.mark.parametrize(
    "name,dtype", [("hybrid_moe_groups", "float32"), ("latent_moe_tied_odd", "float16"), ("dense_mlp_biases", "float32")]
)
def test_step_repository_matches_the_graph(artifacts, tmp_path, name, dtype):
    from tritonclient.grpc import model_config_pb2 as pb

    _, _, artifact = artifacts(name, dtype)
    result = run_cli("triton", artifact, "-o", tmp_path / "repo", "--kind", "step", "--max-batch", 4)
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / configs.STEP_MODEL
    config = _parse(model_dir)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert (model_dir / "1" / "model.onnx").stat().st_size > 0 and (model_dir / "1" / "weights.data").stat().st_size > 0
    graph = _graph_io(model_dir / "1" / "model.onnx")
    type_name = pb.DataType.Name

    # ordinary inputs and outputs: dtype and dims of the graph without its batch dimension
    for tensor in [*config.input, *config.output]:
        dtype_name, dims = graph[tensor.name]
        assert type_name(tensor.data_type) == dtype_name and list(tensor.dims) == dims[1:], tensor.name
    assert {t.name for t in config.input} == {"input_ids", "attention_mask"}  # states are not also ordinary inputs
    assert [t.name for t in config.output] == ["logits"]

    states = config.sequence_batching.state
    graph_states = {n for n in graph if n.startswith(("past.", "present."))}
    assert {s.input_name for s in states} | {s.output_name for s in states} == graph_states
    for state in states:
        for end in (state.input_name, state.output_name):
            dtype_name, dims = graph[end]
            assert type_name(state.data_type) == dtype_name and list(state.dims) == dims[1:], end
        (initial,) = state.initial_state
        assert initial.zero_data and initial.data_type == state.data_type
        assert list(initial.dims) == [0 if d == -1 else d for d in state.dims]  # K/V start empty
        if ".ssm" in state.input_name:
            assert type_name(state.data_type) == "TYPE_FP32"  # the SSM state stays fp32 in every dtype
    # Triton pairs input and output states by sorted position: each pair must be at the same position
    ins, outs = sorted(s.input_name for s in states), sorted(s.output_name for s in states)
    assert [s.output_name for s in sorted(states, key=lambda s: s.input_name)] == outs
    assert [i.split(".", 1)[1] for i in ins] == [o.split(".", 1)[1] for o in outs]


def test_generate_repository_configs(artifacts, tmp_path):
    _, _, artifact = artifacts("hybrid_moe_groups")  # no tokenizer: ids only
    result = run_cli("triton", artifact, "-o", tmp_path / "repo", "--instances", 2, "--max-batch", 3, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [configs.GENERATE_MODEL]
    config = _parse(tmp_path / "repo" / configs.GENERATE_MODEL)
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    assert config.max_batch_size == 3 and config.instance_group[0].count == 2
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["artifact_dir"] == str(artifact.resolve()) and params["max_active_sequences"] == "3" and params["threads"] == "1"
    assert [t.name for t in config.input] == [f.name for f in GENERATE_INPUTS]
    assert [t.name for t in config.input if not t.optional] == ["input_ids", "request_output_len"]
    assert "text_output" not in [t.name for t in config.output]
    assert (tmp_path / "repo" / configs.GENERATE_MODEL / "1" / "model.py").read_text().count("import") == 1


def test_text_ensemble_config(tmp_path):
    from nemotron_deploy.exporter.onnx_export import export_artifact
    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

    artifact = export_artifact(write_random_checkpoint(tmp_path / "ckpt"), tmp_path / "art", progress=False)
    assert run_cli("triton", artifact, "-o", tmp_path / "repo").exit_code == 0
    models = {p.name: _parse(p) for p in (tmp_path / "repo").iterdir()}
    assert sorted(models) == ["ensemble", "preprocessing", configs.GENERATE_MODEL]
    ensemble = models["ensemble"]
    assert [t.name for t in ensemble.input] == [f.name for f in TEXT_INPUTS] and [t.name for t in ensemble.output] == ["text_output"]
    # every name an ensemble step maps exists on the model it maps to
    for step in ensemble.ensemble_scheduling.step:
        model = models[step.model_name]
        assert set(step.input_map) <= {t.name for t in model.input}, step.model_name
        assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
    generate_step = ensemble.ensemble_scheduling.step[1]
    assert {generate_step.input_map[ours] for ours in TEXT_TO_GENERATE.values()} == set(TEXT_TO_GENERATE)


TRITON_CLI_ERRORS = [  # (arguments after the artifact, which artifact, message)
    (("-o", "taken"), "onnxruntime", "already exists"),
    (("-o", "out"), "tensorrt", "has plugin nodes and needs its TensorRT engines"),
    (("-o", "out", "--kind", "step"), "tensorrt", "build it first: nemotron-deploy build"),
    (("-o", "out", "--backend", "tensorrt"), "onnxruntime", "no TensorRT engines"),
    (("-o", "out"), None, "nowhere"),
    (("-o", "out", "--max-batch", 0), "onnxruntime", "--max-batch"),
    (("-o", "out", "--kind", "step"), "kv_in_place", "which onnxruntime's GroupQueryAttention refuses; use --max-batch 1"),
]


@pytest.mark.parametrize("args,target,message", TRITON_CLI_ERRORS, ids=[message for *_, message in TRITON_CLI_ERRORS])
def test_triton_cli_errors(artifacts, tmp_path, args, target, message):
    if target is None:
        artifact = tmp_path / "nowhere"
    elif target == "kv_in_place":
        artifact = artifacts("hybrid_moe_groups", kv_in_place=True)[2]
    else:
        artifact = artifacts("hybrid_moe_groups", target=target)[2]
    (tmp_path / "taken").mkdir()
    args = [tmp_path / a if a in ("taken", "out") else a for a in args]
    assert_one_line_error(run_cli("triton", artifact, *args), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing half-written


def test_step_repository_of_tensorrt_engines(artifacts, tmp_path):
    """A tensorrt-target artifact's step model is its prefill engine; the command names the plugin flag.
    (The engine cannot be built here: a recorded build with a stand-in plan file.)"""
    import json
    import shutil

    _, _, trt_artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    artifact = shutil.copytree(trt_artifact, tmp_path / "artifact")
    raw = json.loads((artifact / "manifest.json").read_text())
    plugins = {"library": "/opt/lib/libnemotron_deploy_plugins.so", "plugins": raw["plugins"]}
    raw["engines"] = {"tensorrt": engine_record(max_seq_len=512, max_new_tokens=256, plugins=plugins)}
    (artifact / "manifest.json").write_text(json.dumps(raw))
    (artifact / "prefill.plan").write_bytes(b"stand-in plan")
    result = run_cli("triton", artifact, "-o", tmp_path / "repo", "--kind", "step")
    assert result.exit_code == 0, result.output
    assert "--backend-config=tensorrt,plugins=/opt/lib/libnemotron_deploy_plugins.so" in result.output
    model_dir = tmp_path / "repo" / configs.STEP_MODEL
    assert _parse(model_dir).platform == "tensorrt_plan"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"stand-in plan" and not (model_dir / "1" / "model.onnx").exists()
