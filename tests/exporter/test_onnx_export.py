"""The export command's artifact: manifest, graph checks, weights stored once, atomic writes."""

import json

import onnx
import pytest

from nemotron_deploy.exporter import io_spec, onnx_export
from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import FORMAT_VERSION, MANIFEST_FILE, read_manifest, to_json


@pytest.mark.parametrize(
    "name,dtype,target", [("latent_moe_tied_odd", "float32", "onnxruntime"), ("hybrid_moe_groups", "bfloat16", "tensorrt")]
)
def test_typed_manifest_reads_back_the_json_it_writes(artifacts, name, dtype, target):
    """The one reader and the one writer are inverses: every field the exporter writes is typed, none is lost."""
    _, _, artifact = artifacts(name, dtype, target)
    on_disk = json.loads((artifact / MANIFEST_FILE).read_text())
    assert to_json(read_manifest(artifact)) == on_disk
    assert set(on_disk) >= {"model", "graphs", "states", "generation", "files", "exporter"} and (target != "tensorrt" or on_disk["plugins"])


def test_artifact_layout_and_manifest(artifacts):
    ref, ckpt, artifact = artifacts("latent_moe_tied_odd")
    manifest = read_manifest(artifact)
    cfg = ModelConfig.from_file(ckpt)
    assert json.loads((artifact / MANIFEST_FILE).read_text())["format_version"] == FORMAT_VERSION and manifest.target == "onnxruntime"
    assert manifest.model.layer_types == cfg.layer_types
    assert [s.name for s in manifest.states] == [s.name for s in io_spec.state_specs(cfg, "past")]
    assert manifest.generation.eos_token_ids == tuple(cfg.eos_token_id)
    # float32 for onnxruntime: one step graph serves both kinds (any T), so one session holds the weights
    assert manifest.graph("prefill").file == manifest.graph("decode").file == "step.onnx"
    for graph in ("prefill", "decode"):
        model = onnx.load(str(manifest.graph_path(graph)), load_external_data=False)
        assert [i.name for i in model.graph.input] == [s.name for s in io_spec.step_inputs(cfg)]
        assert [o.name for o in model.graph.output] == [s.name for s in io_spec.step_outputs(cfg)]
        assert manifest.graph(graph).inputs[0].shape == ("batch", "new_tokens")
        onnx.checker.check_model(str(manifest.graph_path(graph)), full_check=True)
    # weights stored once for both graphs (and not inline in the .onnx files)
    weight_bytes = 4 * sum(p.numel() for p in ref.parameters())
    data = (artifact / "weights.data").stat().st_size
    assert 0.9 * weight_bytes < data < 1.1 * weight_bytes
    for graph in ("prefill", "decode"):
        model = onnx.load(str(manifest.graph_path(graph)), load_external_data=False)
        inline = [t.name for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > 1024]
        assert not inline, f"{graph}: weights stored inside the graph: {inline}"
    assert (artifact / "generation_config.json").is_file()
    # weights.data's SHA-256 is computed as it is written (tied embeddings: a tensor written, then rolled
    # back as a duplicate): it must be the file's own
    from nemotron_deploy.runtime.artifact.integrity import file_sha256

    record = next(f for f in manifest.files if f.name == "weights.data")
    assert record.sha256 == file_sha256(artifact / "weights.data") and record.bytes == data


def test_interrupted_export_leaves_nothing(hf_checkpoints, tmp_path, monkeypatch):
    _, ckpt = hf_checkpoints("dense_mlp_biases")

    def boom(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "_check", boom)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_artifact(ckpt, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_never_overwritten(hf_checkpoints, tmp_path):
    _, ckpt = hf_checkpoints("dense_mlp_biases")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("user data")
    with pytest.raises(NemotronDeployError, match="already exists"):
        onnx_export.export_artifact(ckpt, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "mine.txt").read_text() == "user data"
    with pytest.raises(NemotronDeployError, match="--target 'openvino'"):
        onnx_export.export_artifact(ckpt, tmp_path / "new", target="openvino", progress=False)


def test_a_model_without_recurrent_state_exports_and_decodes(tmp_path):
    """MoE and MLP layers only: the step graphs take and return no state at all (the trace's dynamic
    shapes then have no states element); greedy tokens still equal transformers'."""
    import torch
    from hf_oracle import hf_logits, make_checkpoint

    from nemotron_deploy.runtime.session import Session

    def greedy(ref, prompt, n):  # transformers' generate wants an attention layer for its cache: no cache
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(hf_logits(ref, torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt) :]

    ref, ckpt = make_checkpoint("hybrid_moe_groups", tmp_path / "ckpt", layers_block_type=["moe", "mlp"], intermediate_size=24)
    artifact = onnx_export.export_artifact(ckpt, tmp_path / "artifact", progress=False)
    assert read_manifest(artifact).states == ()
    out = Session(artifact).generate([[5, 17, 3, 9], [7]], max_new_tokens=8, ignore_eos=True)
    assert out.new_token_ids == [greedy(ref, [5, 17, 3, 9], 8), greedy(ref, [7], 8)]
