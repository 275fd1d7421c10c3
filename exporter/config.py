"""NemotronH model configuration: one frozen dataclass, read from every `config.json` spelling in the wild.

Three spellings of the layer pattern exist:
  * transformers 5.3:   `layers_block_type` = ["mamba", "attention", "moe", ...]
  * transformers 5.2x:  `layers_block_type` = ["linear_attention", "full_attention", "mlp", "moe", ...]
  * hub checkpoints:    `hybrid_override_pattern` = "M*-E..." (M mamba, * attention, - mlp, E moe)
and several fields have two names (`n_groups` / `mamba_n_groups`, ...). `ModelConfig.from_hf` accepts
all of them and validates the result, naming the field and the expected values on failure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nemotron_deploy.runtime.artifact.dtypes import FLOAT_DTYPES
from nemotron_deploy.runtime.artifact.errors import ConfigError, read_json_object

LAYER_KINDS = ("mamba", "attention", "mlp", "moe")
LAYER_LETTERS = {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}  # hybrid_override_pattern's

# Every spelling of a layer kind, mapped to ours.
_KIND_ALIASES = {
    **{kind: kind for kind in LAYER_KINDS},
    **{letter: kind for kind, letter in LAYER_LETTERS.items()},
    "linear_attention": "mamba",
    "full_attention": "attention",
}

# Our field name -> names it has in the wild, in order of preference.
_FIELD_ALIASES = {
    "n_groups": ("n_groups", "mamba_n_groups"),
    "conv_kernel": ("conv_kernel", "mamba_d_conv"),
    "chunk_size": ("chunk_size", "mamba_chunk_size"),
    "time_step_min": ("time_step_min", "mamba_dt_min"),
    "time_step_limit": ("time_step_limit", "mamba_dt_limit"),
    "use_conv_bias": ("use_conv_bias", "mamba_conv_bias"),
    "layer_norm_epsilon": ("layer_norm_epsilon", "norm_eps", "rms_norm_eps"),
    "n_routed_experts": ("n_routed_experts", "num_local_experts"),
}


def _decode_float(value: Any, field_name: str) -> float:
    """transformers >= 5.2x writes infinity as {"__float__": "Infinity"}; the hub as a bare Infinity."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config.json: field '{field_name}' must be a number, got {value!r}") from None


@dataclass(frozen=True)
class ModelConfig:
    """Everything the step model needs, with derived sizes computed once.

    Dimension legend used across the code: B batch, T new tokens, S past+new tokens, E hidden size,
    H mamba heads, P mamba head dim, G mamba groups, N ssm state size, K conv kernel.
    """

    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    # attention
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    # dense MLP and shared expert
    intermediate_size: int
    mlp_bias: bool
    # mamba-2
    mamba_num_heads: int
    mamba_head_dim: int
    n_groups: int
    ssm_state_size: int
    conv_kernel: int
    use_conv_bias: bool
    use_bias: bool
    chunk_size: int
    time_step_min: float
    time_step_limit: tuple[float, float]
    mamba_ssm_cache_dtype: str
    # MoE
    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    moe_shared_expert_intermediate_size: int
    n_shared_experts: int
    moe_latent_size: int | None
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    # the rest
    layer_norm_epsilon: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    dtype: str
    eos_token_id: tuple[int, ...] = field(default=())
    bos_token_id: int | None = None
    pad_token_id: int | None = None

    # ----------------------------------------------------------------- derived sizes
    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def mamba_intermediate(self) -> int:
        """H * P: width of the SSM input x and of the gate z."""
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, B and C stacked."""
        return self.mamba_intermediate + 2 * self.n_groups * self.ssm_state_size

    @property
    def in_proj_size(self) -> int:
        """in_proj output: gate z, xBC, dt."""
        return self.mamba_intermediate + self.conv_dim + self.mamba_num_heads

    @property
    def moe_input_size(self) -> int:
        """Width the routed experts see: the latent size when latent projections exist."""
        return self.moe_latent_size if self.moe_latent_size is not None else self.hidden_size

    @property
    def dt_clamp(self) -> tuple[float, float]:
        """(low, high) clamp of dt = softplus(dt + dt_bias) in multi-token steps (prefill).

        transformers (5.23, pure-torch path) clamps its chunked scan at (time_step_min, inf) and ignores
        `time_step_limit`; we follow it so that our prefill logits equal the reference.
        """
        return (self.time_step_min, math.inf)

    @property
    def dt_clamp_decode(self) -> tuple[float, float]:
        """The clamp in single-token steps: none, as transformers' recurrent decode path applies none.

        So a step of T = 1 is a decode step with transformers' decode semantics, and a step of T > 1 a
        prefill step with its prefill semantics; they differ only where dt < time_step_min.
        """
        return (0.0, math.inf)

    @property
    def pattern(self) -> str:
        """The layers as hybrid_override_pattern letters, e.g. "M-M*-E"."""
        return "".join(LAYER_LETTERS[kind] for kind in self.layer_types)

    def layers_of(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.layer_types) if k == kind]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["time_step_limit"] = [_json_float(v) for v in self.time_step_limit]
        d["eos_token_id"] = list(self.eos_token_id)
        return d

    # ----------------------------------------------------------------- reading
    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        """Read `config.json` (or the one inside a checkpoint directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no such file (a NemotronH checkpoint directory needs config.json)")
        raw = read_json_object(path, ConfigError)
        try:
            return cls.from_hf(raw)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face config dict in any of the spellings above; validates."""
        r = _Reader(raw)
        model_type = raw.get("model_type", "nemotron_h")
        if model_type != "nemotron_h":
            raise ConfigError(f"field 'model_type' is {model_type!r}, expected 'nemotron_h'")
        _refuse_unsupported(r)
        hidden = r.int("hidden_size")
        mlp_inter = r.int("intermediate_size", 21504)
        limit = r.get("time_step_limit", (0.0, math.inf))
        if not isinstance(limit, (list, tuple)) or len(limit) != 2:
            raise ConfigError(f"field 'time_step_limit' must be a pair [low, high], got {limit!r}")
        latent = r.get("moe_latent_size")
        cfg = cls(
            vocab_size=r.int("vocab_size"),
            hidden_size=hidden,
            layer_types=_layer_types(raw),
            num_attention_heads=r.int("num_attention_heads", 32),
            num_key_value_heads=r.int("num_key_value_heads", r.get("num_attention_heads", 32)),
            head_dim=r.int("head_dim", hidden // max(1, r.get("num_attention_heads", 32))),
            intermediate_size=mlp_inter,
            mlp_bias=r.bool("mlp_bias", False),
            mamba_num_heads=r.int("mamba_num_heads", 128),
            mamba_head_dim=r.int("mamba_head_dim", 64),
            n_groups=r.int("n_groups", 8),
            ssm_state_size=r.int("ssm_state_size", 128),
            conv_kernel=r.int("conv_kernel", 4),
            use_conv_bias=r.bool("use_conv_bias", True),
            use_bias=r.bool("use_bias", False),
            chunk_size=r.int("chunk_size", 128),
            time_step_min=_decode_float(r.get("time_step_min", 0.001), "time_step_min"),
            time_step_limit=tuple(_decode_float(v, "time_step_limit") for v in limit),
            mamba_ssm_cache_dtype=str(r.get("mamba_ssm_cache_dtype", "float32")),
            n_routed_experts=r.int("n_routed_experts", 8),
            num_experts_per_tok=r.int("num_experts_per_tok", 2),
            moe_intermediate_size=r.int("moe_intermediate_size", 7688),
            moe_shared_expert_intermediate_size=r.int("moe_shared_expert_intermediate_size", 7688),
            n_shared_experts=r.int("n_shared_experts", 1),
            moe_latent_size=None if latent is None else r.int("moe_latent_size"),
            n_group=r.int("n_group", 1),
            topk_group=r.int("topk_group", 1),
            norm_topk_prob=r.bool("norm_topk_prob", True),
            routed_scaling_factor=_decode_float(r.get("routed_scaling_factor", 1.0), "routed_scaling_factor"),
            layer_norm_epsilon=_decode_float(r.get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon"),
            tie_word_embeddings=r.bool("tie_word_embeddings", False),
            max_position_embeddings=r.int("max_position_embeddings", 4096),
            dtype=_checkpoint_dtype(raw),
            eos_token_id=_token_ids(raw.get("eos_token_id"), "eos_token_id"),
            bos_token_id=_optional_id(raw.get("bos_token_id"), "bos_token_id"),
            pad_token_id=_optional_id(raw.get("pad_token_id"), "pad_token_id"),
        )
        cfg.validate()
        return cfg

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        kinds = set(self.layer_types)

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.num_layers > 0, "field 'layers_block_type' is empty: expected at least one layer")
        if self.mamba_ssm_cache_dtype not in FLOAT_DTYPES:
            raise ConfigError(f"field 'mamba_ssm_cache_dtype' is {self.mamba_ssm_cache_dtype!r}, expected one of {FLOAT_DTYPES}")
        if "attention" in kinds:
            need(
                self.num_attention_heads % self.num_key_value_heads == 0,
                f"field 'num_attention_heads' ({self.num_attention_heads}) must be a multiple of "
                f"'num_key_value_heads' ({self.num_key_value_heads})",
            )
        if "mamba" in kinds:
            need(
                self.mamba_num_heads % self.n_groups == 0,
                f"field 'mamba_num_heads' ({self.mamba_num_heads}) must be a multiple of 'n_groups' ({self.n_groups})",
            )
            need(self.conv_kernel >= 2, f"field 'conv_kernel' is {self.conv_kernel}, expected >= 2")
            lo, hi = self.time_step_limit
            need(lo <= hi, f"field 'time_step_limit' {list(self.time_step_limit)} must satisfy low <= high")
        if "moe" in kinds:
            e, g = self.n_routed_experts, self.n_group
            need(e % g == 0, f"field 'n_routed_experts' ({e}) must be a multiple of 'n_group' ({g})")
            # Group scores are the sum of each group's top-2 experts (transformers' rule).
            need(g == 1 or e // g >= 2, f"fields 'n_routed_experts'/'n_group' give {e // g} expert per group, expected >= 2")
            need(1 <= self.topk_group <= g, f"field 'topk_group' is {self.topk_group}, expected 1..n_group ({g})")
            reachable = self.topk_group * (e // g)
            need(
                1 <= self.num_experts_per_tok <= reachable,
                f"field 'num_experts_per_tok' is {self.num_experts_per_tok}, expected 1..{reachable} "
                f"(topk_group * n_routed_experts / n_group)",
            )
            need(self.n_shared_experts in (0, 1), f"field 'n_shared_experts' is {self.n_shared_experts}, expected 0 or 1")


class _Reader:
    """Typed access to a raw config dict, resolving field aliases."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw

    def get(self, name: str, default: Any = None) -> Any:
        for alias in _FIELD_ALIASES.get(name, (name,)):
            if alias in self.raw and self.raw[alias] is not None:
                return self.raw[alias]
        return default

    def int(self, name: str, default: Any = None) -> int:
        value = self.get(name, default)
        if value is None:
            raise ConfigError(f"field '{name}' is missing: expected a positive integer")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"field '{name}' is {value!r}, expected a positive integer")
        return value

    def bool(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"field '{name}' is {value!r}, expected true or false")
        return value


def _layer_types(raw: dict[str, Any]) -> tuple[str, ...]:
    if raw.get("layers_block_type") is not None:
        source, items = "layers_block_type", raw["layers_block_type"]
        if not isinstance(items, list):
            raise ConfigError(f"field 'layers_block_type' must be a list, got {type(items).__name__}")
    elif raw.get("layer_types") is not None:
        source, items = "layer_types", raw["layer_types"]
    elif raw.get("hybrid_override_pattern") is not None:
        source, items = "hybrid_override_pattern", list(str(raw["hybrid_override_pattern"]))
    else:
        raise ConfigError("no layer pattern: expected field 'layers_block_type' or 'hybrid_override_pattern'")
    kinds = []
    for i, item in enumerate(items):
        if item not in _KIND_ALIASES:
            spellings = (
                sorted(k for k in _KIND_ALIASES if len(k) > 1) if source != "hybrid_override_pattern" else list(LAYER_LETTERS.values())
            )
            raise ConfigError(f"field '{source}' has unknown layer kind {item!r} at layer {i}, expected one of {spellings}")
        kinds.append(_KIND_ALIASES[item])
    return tuple(kinds)


def _refuse_unsupported(r: _Reader) -> None:
    """Options that change the math in ways we do not implement fail loudly instead of silently."""
    checks = [
        ("mlp_hidden_act", "relu2"),
        ("mamba_hidden_act", "silu"),
    ]
    for name, expected in checks:
        value = r.get(name, expected)
        if value != expected:
            raise ConfigError(f"field '{name}' is {value!r}, only {expected!r} is supported")
    if r.get("sliding_window") is not None:
        raise ConfigError(f"field 'sliding_window' is {r.get('sliding_window')!r}, only null (full attention) is supported")
    if r.get("attention_bias", False) is not False:
        raise ConfigError("field 'attention_bias' is true, only false is supported (NemotronH attention has no bias)")


def _checkpoint_dtype(raw: dict[str, Any]) -> str:
    value = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    value = str(value).replace("torch.", "")
    if value not in FLOAT_DTYPES:
        raise ConfigError(f"field 'dtype' is {value!r}, expected one of {FLOAT_DTYPES}")
    return value


def _token_ids(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"field '{name}' is {value!r}, expected a token id or a list of token ids")
    return tuple(values)


def _optional_id(value: Any, name: str) -> int | None:
    ids = _token_ids(value, name)
    return ids[0] if ids else None


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity")
