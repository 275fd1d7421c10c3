"""config.json in every spelling -> one ModelConfig; bad configs -> errors naming the field."""

import json
import math

import pytest
from hf_oracle import hf_config

from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.runtime.artifact.errors import ConfigError

HUB_STYLE = {  # as in the hub's Nemotron-H / Nano-v2 configs
    "model_type": "nemotron_h",
    "vocab_size": 100,
    "hidden_size": 32,
    "hybrid_override_pattern": "M-M*ME",
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 40,
    "mamba_num_heads": 4,
    "mamba_head_dim": 8,
    "mamba_n_groups": 2,
    "ssm_state_size": 8,
    "mamba_d_conv": 3,
    "mamba_chunk_size": 16,
    "mamba_dt_min": 0.002,
    "mamba_dt_limit": [0.0, math.inf],
    "mamba_conv_bias": True,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "moe_shared_expert_intermediate_size": 16,
    "n_group": 2,
    "topk_group": 1,
    "torch_dtype": "bfloat16",
    "eos_token_id": [2, 11],
}


def test_three_spellings_give_the_same_config(tmp_path):
    v53 = dict(HUB_STYLE, layers_block_type=["mamba", "mlp", "mamba", "attention", "mamba", "moe"])
    v523 = dict(HUB_STYLE, layers_block_type=["linear_attention", "mlp", "linear_attention", "full_attention", "linear_attention", "moe"])
    del v53["hybrid_override_pattern"], v523["hybrid_override_pattern"]
    configs = [ModelConfig.from_hf(raw) for raw in (HUB_STYLE, v53, v523)]
    assert configs[0] == configs[1] == configs[2]
    cfg = configs[0]
    assert cfg.layer_types == ("mamba", "mlp", "mamba", "attention", "mamba", "moe")
    assert (cfg.n_groups, cfg.conv_kernel, cfg.chunk_size, cfg.time_step_min) == (2, 3, 16, 0.002)
    assert cfg.time_step_limit == (0.0, math.inf) and cfg.dtype == "bfloat16" and cfg.eos_token_id == (2, 11)
    assert cfg.conv_dim == 4 * 8 + 2 * 2 * 8 and cfg.in_proj_size == 32 + cfg.conv_dim + 4


def test_reads_what_transformers_writes(tmp_path):
    """transformers 5.23 serialises infinity as {"__float__": "Infinity"}."""
    hf = hf_config("hybrid_moe_groups")
    hf.save_pretrained(tmp_path)
    assert "__float__" in (tmp_path / "config.json").read_text()
    cfg = ModelConfig.from_file(tmp_path)
    assert cfg.time_step_limit == (0.0, math.inf)
    assert cfg.layer_types == ("mamba", "moe", "attention", "mamba", "moe", "mamba")
    assert (cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor) == (4, 2, 2.5)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hybrid_override_pattern": "M*X"}, "hybrid_override_pattern"),
        ({"layers_block_type": ["mamba", "cross_attention"]}, "layers_block_type"),
        ({"hidden_size": -3}, "hidden_size"),
        ({"hidden_size": "big"}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_attention_heads"),
        ({"mamba_n_groups": 3}, "mamba_num_heads"),
        ({"topk_group": 3}, "topk_group"),
        ({"num_experts_per_tok": 5, "topk_group": 1}, "num_experts_per_tok"),
        ({"mlp_hidden_act": "gelu"}, "mlp_hidden_act"),
        ({"sliding_window": 128}, "sliding_window"),
        ({"torch_dtype": "float8"}, "dtype"),
        ({"mamba_ssm_cache_dtype": "int8"}, "mamba_ssm_cache_dtype"),
        ({"model_type": "llama"}, "model_type"),
        ({"vocab_size": None}, "vocab_size"),
    ],
)
def test_invalid_configs_name_the_field(change, field):
    raw = dict(HUB_STYLE, **change)
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_hf(raw)
    msg = str(e.value)
    assert f"'{field}'" in msg and "\n" not in msg, msg


def test_missing_and_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: no such file"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(HUB_STYLE, hybrid_override_pattern="MQ")))
    with pytest.raises(ConfigError, match=r"config\.json: field 'hybrid_override_pattern' has unknown layer kind 'Q' at layer 1"):
        ModelConfig.from_file(tmp_path)
