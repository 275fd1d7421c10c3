"""The oracle: small random NemotronH checkpoints written by transformers' own `save_pretrained`.

transformers 5.23.0's pure-torch path is the reference (5.3.0's chunked scan is wrong past one chunk).
Weights are randomised beyond transformers' init (norm weights, A_log, D, dt_bias, correction bias are
constants there) so that a parameter we forgot to apply changes the result, and scaled so that logits
are well spread and greedy choices are not near-ties.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

# Small configs covering every layer kind and option. Sizes are deliberately odd.
CONFIGS = {
    # Nano-30B-like hybrid: mamba, grouped-routed MoE (n_group and topk_group > 1), attention, chunked scan.
    "hybrid_moe_groups": dict(
        layers_block_type=["mamba", "moe", "attention", "mamba", "moe", "mamba"],
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        mamba_num_heads=6,
        mamba_head_dim=8,
        n_groups=2,
        ssm_state_size=8,
        chunk_size=8,
        n_routed_experts=12,
        num_experts_per_tok=3,
        moe_intermediate_size=20,
        moe_shared_expert_intermediate_size=28,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    ),
    # Latent MoE, tied embeddings, odd sizes, conv kernel 3, chunk of 5, no norm of top-k weights.
    "latent_moe_tied_odd": dict(
        layers_block_type=["mamba", "attention", "moe", "mamba"],
        hidden_size=36,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=10,
        mamba_num_heads=6,
        mamba_head_dim=6,
        n_groups=3,
        ssm_state_size=5,
        conv_kernel=3,
        chunk_size=5,
        n_routed_experts=6,
        num_experts_per_tok=2,
        moe_intermediate_size=14,
        moe_latent_size=22,
        moe_shared_expert_intermediate_size=18,
        n_group=1,
        topk_group=1,
        norm_topk_prob=False,
        tie_word_embeddings=True,
    ),
    # Nemotron-H-8B / Nano-9B-v2-like: mamba, dense relu2 MLP, attention; projection and MLP biases.
    "dense_mlp_biases": dict(
        layers_block_type=["mamba", "mlp", "mamba", "attention", "mlp", "mamba"],
        hidden_size=40,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=10,
        intermediate_size=56,
        mamba_num_heads=4,
        mamba_head_dim=10,
        n_groups=1,
        ssm_state_size=12,
        chunk_size=6,
        use_bias=True,
        mlp_bias=True,
    ),
}

# transformers 5.23 spells the kinds this way in layers_block_type
_HF_KIND = {"mamba": "linear_attention", "attention": "full_attention", "mlp": "mlp", "moe": "moe"}


def hf_config(name: str, vocab_size: int = 101, **overrides):
    from transformers import NemotronHConfig

    kw = dict(CONFIGS[name], vocab_size=vocab_size, initializer_range=0.15, max_position_embeddings=512)
    kw.update(overrides)
    kw["layers_block_type"] = [_HF_KIND[k] for k in kw["layers_block_type"]]
    cfg = NemotronHConfig(**kw)
    # The plainest paths as the oracle: eager attention and the per-expert loop (its grouped_mm path
    # also refuses odd sizes on the CPU).
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    return cfg


def hf_model(name: str, seed: int = 0, **overrides):
    """A transformers NemotronHForCausalLM with random weights, in fp32 eval mode."""
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    model = NemotronHForCausalLM(hf_config(name, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if pname.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 4 + 0.5))
            elif pname.endswith("dt_bias"):
                p.copy_(noise - 3.5)  # softplus -> ~0.003..0.3
                p[0] = -9.0  # softplus -> 1.2e-4 < time_step_min: exercises the dt clamp
            elif pname.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.copy_(1 + 0.3 * noise)
            elif pname.endswith("bias"):
                p.copy_(0.1 * noise)
        for bname, b in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
    return model


def save_checkpoint(model, path: Path, dtype: torch.dtype = torch.float32, max_shard_size: str | None = None) -> Path:
    """save_pretrained (optionally sharded / in bf16) -> the checkpoint directory."""
    path.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.to(dtype).save_pretrained(path, **kwargs)
        model.to(torch.float32)
    return path


def make_checkpoint(
    name: str, path: Path, seed: int = 0, dtype: torch.dtype = torch.float32, max_shard_size: str | None = None, **overrides
):
    """(transformers model in fp32 with exactly the saved weights, checkpoint directory)."""
    model = hf_model(name, seed, **overrides)
    save_checkpoint(model, path, dtype, max_shard_size)  # the round trip leaves the oracle with the saved (rounded) weights
    return model, path


@torch.no_grad()
def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Full-sequence logits (B, T, V) from transformers, no cache."""
    return model(ids, use_cache=False).logits


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own generate (chunked prefill, then recurrent single-token steps)."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[0, len(prompt) :].tolist()


def random_prompt(length: int, seed: int, vocab_size: int = 101) -> list[int]:
    """Token ids 3..vocab-1 (no pad/bos/eos), the same for a seed on every machine."""
    return torch.randint(3, vocab_size, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
