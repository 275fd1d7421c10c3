"""The step model's parameters and buffers by name and shape, from the config alone (no torch).

`inspect` and checkpoint validation need only this table, so they run on an install without PyTorch;
tests/exporter/test_checkpoint.py checks it against the torch model's own `state_dict` for every
test config, so the two cannot drift apart.
"""

from __future__ import annotations

import math

from nemotron_deploy.exporter.config import ModelConfig

# buffers (not parameters): stored in checkpoints, not counted in num_parameters
BUFFERS = ("e_score_correction_bias",)


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of `NemotronHStepModel(cfg).state_dict()`: name -> shape (experts stacked on axis 0)."""
    e = cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embeddings.weight": (cfg.vocab_size, e)}
    for i, kind in enumerate(cfg.layer_types):
        prefix = f"layers.{i}."
        shapes[prefix + "norm.weight"] = (e,)
        for name, shape in _mixer(cfg, kind).items():
            shapes[prefix + "mixer." + name] = shape
    shapes["norm_f.weight"] = (e,)
    shapes["lm_head.weight"] = (cfg.vocab_size, e)
    return shapes


def num_parameters(cfg: ModelConfig) -> int:
    """Like `sum(p.numel() for p in model.parameters())`: buffers left out, lm_head counted even if tied."""
    return sum(math.prod(s) for name, s in parameter_shapes(cfg).items() if not name.endswith(BUFFERS))


def active_parameters(cfg: ModelConfig) -> int:
    """Parameters one token uses: `num_parameters` less the routed experts it is not sent to (k of X)."""
    per_expert = 2 * cfg.moe_intermediate_size * cfg.moe_input_size  # up and down
    return num_parameters(cfg) - len(cfg.layers_of("moe")) * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert


def _linear(name: str, out: int, inp: int, bias: bool) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp), **({f"{name}.bias": (out,)} if bias else {})}


def _mixer(cfg: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    e = cfg.hidden_size
    if kind == "mamba":
        h, c = cfg.mamba_num_heads, cfg.conv_dim
        return {
            **_linear("in_proj", cfg.in_proj_size, e, cfg.use_bias),
            "conv1d.weight": (c, 1, cfg.conv_kernel),
            **({"conv1d.bias": (c,)} if cfg.use_conv_bias else {}),
            "dt_bias": (h,),
            "A_log": (h,),
            "D": (h,),
            "norm.weight": (cfg.mamba_intermediate,),
            **_linear("out_proj", e, cfg.mamba_intermediate, cfg.use_bias),
        }
    if kind == "attention":
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        return {
            **_linear("q_proj", q, e, False),
            **_linear("k_proj", kv, e, False),
            **_linear("v_proj", kv, e, False),
            **_linear("o_proj", e, q, False),
        }
    if kind == "mlp":
        return {
            **_linear("up_proj", cfg.intermediate_size, e, cfg.mlp_bias),
            **_linear("down_proj", e, cfg.intermediate_size, cfg.mlp_bias),
        }
    x, inter, din = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.moe_input_size
    shapes = {"router_weight": (x, e), "e_score_correction_bias": (x,), "experts_up": (x, inter, din), "experts_down": (x, din, inter)}
    if cfg.moe_latent_size is not None:
        shapes |= _linear("fc1_latent_proj", din, e, cfg.mlp_bias) | _linear("fc2_latent_proj", e, din, cfg.mlp_bias)
    if cfg.n_shared_experts > 0:
        s = cfg.moe_shared_expert_intermediate_size
        shapes |= _linear("shared_experts.up_proj", s, e, cfg.mlp_bias) | _linear("shared_experts.down_proj", e, s, cfg.mlp_bias)
    return shapes
