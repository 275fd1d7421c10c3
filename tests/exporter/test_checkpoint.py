"""Loading weights: every on-disk layout in the wild, and one-line errors for broken checkpoints."""

import json
import shutil

import pytest
import torch
from hf_oracle import hf_logits, hf_model, make_checkpoint, save_checkpoint
from safetensors.torch import load_file, save_file

from nemotron_deploy.exporter.checkpoint import load_model, open_checkpoint
from nemotron_deploy.runtime.artifact.errors import CheckpointError

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 61, 23, 7, 70, 11, 2, 64]])


def _logits(model, ids=IDS):
    model.all_logits = True
    logits, _ = model.step(ids, torch.ones_like(ids), model.initial_state(ids.shape[0]))
    return logits


def _assert_matches(ref, got, rel=1e-4):
    err = (ref - got).abs().max().item() / ref.abs().max().item()
    print(f"max relative error {err:.2e}")
    assert err <= rel


def _rewrite(path, fn):
    """Apply fn to the single-file state dict of a checkpoint and write it back."""
    tensors = load_file(path / "model.safetensors")
    save_file(fn(tensors), path / "model.safetensors", metadata={"format": "pt"})


def test_sharded_checkpoint(tmp_path):
    ref, path = make_checkpoint("hybrid_moe_groups", tmp_path, max_shard_size="40KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 2
    _assert_matches(hf_logits(ref, IDS), _logits(load_model(path, "float32")))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_exactly(tmp_path, dtype):
    """A bf16/fp16 checkpoint computed in fp32 equals transformers in fp32 on the same rounded weights."""
    ref, path = make_checkpoint("latent_moe_tied_odd", tmp_path, dtype=dtype)
    assert open_checkpoint(path).stored_dtype == str(dtype).removeprefix("torch.")
    _assert_matches(hf_logits(ref, IDS), _logits(load_model(path, "float32")))
    native = load_model(path)  # computes in the stored dtype
    assert native.embeddings.weight.dtype == dtype
    assert native.layers[2].mixer.e_score_correction_bias.dtype == torch.float32
    _assert_matches(hf_logits(ref, IDS), _logits(native), rel=5e-2)


def test_weights_are_memory_mapped_not_copied(tmp_path):
    """Parameters in the stored dtype point into the file's memory map: opening costs no copy."""
    import ctypes

    _, path = make_checkpoint("dense_mlp_biases", tmp_path)
    model = load_model(path, "float32")
    (mm,) = model._mapped_files._maps.values()
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    for name, p in model.named_parameters():
        assert base <= p.data_ptr() < base + len(mm), f"{name} was copied out of the mapping"


def test_transformers_53_embedding_name_fused_experts_and_model_prefix(tmp_path):
    ref, path = make_checkpoint("hybrid_moe_groups", tmp_path)

    def relayout(t):
        out = {}
        for k, v in t.items():
            if ".experts." in k:
                continue
            out[k.replace("backbone.embeddings.", "backbone.embedding.").replace("backbone.layers", "model.layers")] = v
        for layer in (1, 4):
            for proj in ("up", "down"):
                stacked = torch.stack([t[f"backbone.layers.{layer}.mixer.experts.{j}.{proj}_proj.weight"] for j in range(12)])
                out[f"backbone.layers.{layer}.mixer.experts.{proj}_proj"] = stacked
        return out

    _rewrite(path, relayout)
    _assert_matches(hf_logits(ref, IDS), _logits(load_model(path, "float32")))


def test_tied_embeddings_without_lm_head(tmp_path):
    ref, path = make_checkpoint("latent_moe_tied_odd", tmp_path)
    with torch.no_grad():
        ref.lm_head.weight.copy_(ref.model.embeddings.weight)  # what a tied hub checkpoint means
    _rewrite(path, lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    _assert_matches(hf_logits(ref, IDS), _logits(load_model(path, "float32")))
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(cfg, tie_word_embeddings=False)))
    with pytest.raises(CheckpointError, match=r"missing tensor 'lm_head.weight' .*tie_word_embeddings is false"):
        open_checkpoint(path)


@pytest.fixture
def good_checkpoint(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    save_checkpoint(hf_model("hybrid_moe_groups"), base)
    return base


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors(good_checkpoint, tmp_path):
    path = _copy(good_checkpoint, tmp_path / "c")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated file: tensor '.*' ends at byte \d+, file has \d+ bytes"):
        open_checkpoint(path)
    (path / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"truncated safetensors file"):
        open_checkpoint(path)


def test_wrong_shape_missing_and_extra_tensors(good_checkpoint, tmp_path):
    path = _copy(good_checkpoint, tmp_path / "shape")
    _rewrite(path, lambda t: dict(t, **{"backbone.layers.0.mixer.in_proj.weight": torch.zeros(7, 48)}))
    with pytest.raises(
        CheckpointError, match=r"tensor 'backbone.layers.0.mixer.in_proj.weight' has shape \[7, 48\], expected \[\d+, 48\] from config.json"
    ):
        open_checkpoint(path)
    path = _copy(good_checkpoint, tmp_path / "missing")
    _rewrite(path, lambda t: {k: v for k, v in t.items() if k != "backbone.layers.3.mixer.D"})
    with pytest.raises(CheckpointError, match=r"missing tensor 'backbone.layers.3.mixer.D' of shape \[6\]"):
        open_checkpoint(path)
    path = _copy(good_checkpoint, tmp_path / "expert")
    _rewrite(path, lambda t: {k: v for k, v in t.items() if k != "backbone.layers.4.mixer.experts.7.down_proj.weight"})
    with pytest.raises(CheckpointError, match=r"missing tensor 'backbone.layers.4.mixer.experts.7.down_proj.weight'"):
        open_checkpoint(path)
    path = _copy(good_checkpoint, tmp_path / "extra")
    _rewrite(path, lambda t: dict(t, **{"backbone.layers.2.mixer.q_norm.weight": torch.ones(8)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'backbone.layers.2.mixer.q_norm.weight'"):
        open_checkpoint(path)


def test_no_weights_and_missing_shard(good_checkpoint, tmp_path):
    path = _copy(good_checkpoint, tmp_path / "none")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights found \(pickle \.bin checkpoints are not read\)"):
        open_checkpoint(path)
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"lists shard model-00001-of-00002.safetensors which does not exist"):
        open_checkpoint(path)


def test_parameter_table_is_the_models(config_name):
    """The torch-free table that inspect and checkpoint validation use lists exactly the model's tensors."""
    from hf_oracle import CONFIGS, hf_config

    from nemotron_deploy.exporter.config import ModelConfig
    from nemotron_deploy.exporter.modeling.model import NemotronHStepModel
    from nemotron_deploy.exporter.parameters import num_parameters, parameter_shapes
    from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG

    assert config_name in CONFIGS
    for raw in (hf_config(config_name).to_dict(), TINY_CONFIG):
        cfg = ModelConfig.from_hf(raw)
        with torch.device("meta"):
            model = NemotronHStepModel(cfg)
        assert parameter_shapes(cfg) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert num_parameters(cfg) == sum(p.numel() for p in model.parameters())
