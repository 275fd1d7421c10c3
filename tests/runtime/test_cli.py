"""The `nemotron-deploy` CLI: inspect (against transformers' own counts), demo, one-line errors."""

import json

import pytest
import torch
from helpers import assert_one_line_error, run_cli
from hf_oracle import hf_model, save_checkpoint


def test_inspect_json_matches_transformers(hf_checkpoints, config_name):
    ref, path = hf_checkpoints(config_name)
    result = run_cli("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    hf_types = {"linear_attention": "mamba", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}
    assert info["layer_types"] == [hf_types[k] for k in ref.config.layers_block_type]
    assert info["num_parameters"] == sum(p.numel() for p in ref.parameters())
    cfg = ref.config
    per_expert = 2 * cfg.moe_intermediate_size * (cfg.moe_latent_size or cfg.hidden_size)
    unused = info["layer_types"].count("moe") * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    assert info["active_parameters_per_token"] == info["num_parameters"] - unused
    # one token of K/V per attention layer, as transformers' cache holds it
    with torch.no_grad():
        cache = ref(torch.tensor([[5]]), use_cache=True).past_key_values
    kv = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers if getattr(layer, "keys", None) is not None)
    assert info["kv_bytes_per_token"] == kv * 4


def test_inspect_human_readable(hf_checkpoints):
    _, path = hf_checkpoints("hybrid_moe_groups")
    result = run_cli("inspect", path)
    assert result.exit_code == 0, result.output
    assert "ME*MEM" in result.output and "6 (3 mamba, 1 attention, 2 moe)" in result.output


def _unknown_layer_kind(root):
    """A transformers checkpoint whose config names a layer kind NemotronH does not have."""
    save_checkpoint(hf_model("dense_mlp_biases"), root)
    cfg = json.loads((root / "config.json").read_text())
    cfg["layers_block_type"][1] = "retention"
    (root / "config.json").write_text(json.dumps(cfg))


# (what to put at CHECKPOINT, the message of `inspect CHECKPOINT`'s one-line error)
BAD_CHECKPOINTS = [
    (lambda root: None, "not a directory"),
    (lambda root: root.mkdir(), "config.json: no such file"),
    (_unknown_layer_kind, "field 'layers_block_type' has unknown layer kind 'retention' at layer 1"),
]


@pytest.mark.parametrize("make,message", BAD_CHECKPOINTS, ids=[message for _, message in BAD_CHECKPOINTS])
def test_bad_checkpoints_are_one_line_errors(tmp_path, make, message):
    make(tmp_path / "checkpoint")
    assert_one_line_error(run_cli("inspect", tmp_path / "checkpoint"), message)


def test_demo_checkpoint_is_what_transformers_loads(tmp_path):
    """The random checkpoint the demo writes is in the real hub layout."""
    from transformers import NemotronHForCausalLM

    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

    out = write_random_checkpoint(tmp_path / "demo")
    ref = NemotronHForCausalLM.from_pretrained(out).eval()
    info = json.loads(run_cli("inspect", out, "--json").output)
    assert info["num_parameters"] == sum(p.numel() for p in ref.parameters())
    assert info["layer_types"] == ["mamba", "mlp", "mamba", "moe", "attention", "mamba", "moe"]
    again = run_cli("demo", "-o", tmp_path)
    assert again.exit_code == 2 and "already exists" in again.output
