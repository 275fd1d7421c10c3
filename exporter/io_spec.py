"""The step contract: every input, output and state tensor of one step, named in one place.

One step consumes T new tokens for B sequences. Its inputs are `input_ids`, `attention_mask` (over the
past and the new tokens, 1 = real token, 0 = left padding) and every state `past.{layer}.{kind}`;
its outputs are `logits` and every updated state `present.{layer}.{kind}`. The same table drives the
torch step model's argument order, the ONNX names and dynamic axes, the manifest and the runtime.

Shape symbols: `batch` (B), `new_tokens` (T), `past_len` (tokens already in the K/V cache),
`total_len` (= past_len + new_tokens).
"""

from __future__ import annotations

from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.runtime.artifact import dtypes
from nemotron_deploy.runtime.artifact.manifest import TensorSpec  # the manifest records these, dtype resolved

# state kinds per layer kind, in argument order
STATE_KINDS = {"mamba": ("conv", "ssm"), "attention": ("key", "value")}


def state_specs(cfg: ModelConfig, prefix: str, seq_symbol: str = "past_len", ssm_kernel_layout: bool = False) -> list[TensorSpec]:
    """Per-layer states, layers in order, `prefix` "past" (inputs) or "present" (outputs).

    conv:  [batch, conv_dim, conv_kernel - 1]  model dtype: the last K-1 inputs of the causal conv
    ssm:   [batch, H, P, N]                    mamba_ssm_cache_dtype (fp32 by default)
           [batch, H, N, P] with ssm_kernel_layout: as onnxruntime's LinearAttention keeps it (the
                            onnxruntime target's step graph: `ssm_kernel_layout`)
    key:   [batch, kv_heads, seq, head_dim]    model dtype, no positional encoding applied
    value: [batch, kv_heads, seq, head_dim]    model dtype
    """
    specs = []
    for i, kind in enumerate(cfg.layer_types):
        if kind == "mamba":
            specs.append(TensorSpec(f"{prefix}.{i}.conv", "conv_state", "model", ("batch", cfg.conv_dim, cfg.conv_kernel - 1), i))
            head = (cfg.ssm_state_size, cfg.mamba_head_dim) if ssm_kernel_layout else (cfg.mamba_head_dim, cfg.ssm_state_size)
            shape = ("batch", cfg.mamba_num_heads, *head)
            specs.append(TensorSpec(f"{prefix}.{i}.ssm", "ssm_state", cfg.mamba_ssm_cache_dtype, shape, i))
        elif kind == "attention":
            shape = ("batch", cfg.num_key_value_heads, seq_symbol, cfg.head_dim)
            specs.append(TensorSpec(f"{prefix}.{i}.key", "key", "model", shape, i))
            specs.append(TensorSpec(f"{prefix}.{i}.value", "value", "model", shape, i))
    return specs


def ssm_kernel_layout(target: str, graph: str) -> bool:
    """Whether a graph keeps the SSM state as onnxruntime's LinearAttention does, (B, H, N, P): the
    onnxruntime target's one step graph, whose Mamba scan is that node for any T (transposing the state
    in and out of it in every layer cost 2.4-2.7 ms of a decode step). Every other graph, and the torch
    model, keep the step contract's (B, H, P, N)."""
    return target == "onnxruntime" and graph == "step"


def step_inputs(cfg: ModelConfig, ssm_kernel_layout: bool = False) -> list[TensorSpec]:
    return [
        TensorSpec("input_ids", "input_ids", "int64", ("batch", "new_tokens")),
        TensorSpec("attention_mask", "attention_mask", "int64", ("batch", "total_len")),
        *state_specs(cfg, "past", "past_len", ssm_kernel_layout),
    ]


def step_outputs(cfg: ModelConfig, all_logits: bool = False, ssm_kernel_layout: bool = False) -> list[TensorSpec]:
    logits_len = "new_tokens" if all_logits else 1
    return [
        TensorSpec("logits", "logits", "float32", ("batch", logits_len, cfg.vocab_size)),
        *state_specs(cfg, "present", "total_len", ssm_kernel_layout),
    ]


def state_bytes_per_sequence(cfg: ModelConfig, dtype_bytes: int) -> int:
    """Bytes of the fixed-size (Mamba) states of one sequence."""
    ssm_bytes = dtypes.dtype_bytes(cfg.mamba_ssm_cache_dtype)
    per_layer = cfg.conv_dim * (cfg.conv_kernel - 1) * dtype_bytes
    per_layer += cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * ssm_bytes
    return per_layer * len(cfg.layers_of("mamba"))


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: int) -> int:
    """Bytes the attention K/V cache grows by for each token of one sequence."""
    return 2 * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes * len(cfg.layers_of("attention"))
