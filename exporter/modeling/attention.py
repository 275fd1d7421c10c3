"""Grouped-query attention with an explicit K/V cache. NemotronH applies no positional encoding.

Legend: B batch, T new tokens, S = past + T, Hq query heads, Hkv key/value heads, R = Hq / Hkv, D head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from nemotron_deploy.exporter import plugin_nodes
from nemotron_deploy.exporter.config import ModelConfig


def attention_bias(attention_mask: torch.Tensor, new_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (B, 1, 1, T, S): 0 where query i may see key j, a large negative number elsewhere.

    attention_mask: (B, S) with 1 for real tokens and 0 for left padding. Query i sits at absolute
    position S - T + i and sees keys j <= that position that are real. A finite minimum (not -inf)
    keeps fully masked rows (queries at padding positions) finite, so no NaN reaches later layers.
    """
    total = attention_mask.shape[1]
    query_pos = torch.arange(new_tokens, device=attention_mask.device) + (total - new_tokens)
    key_pos = torch.arange(total, device=attention_mask.device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None] & attention_mask.bool()[:, None, :]  # (B, T, S)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None, None]


def kv_positions(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupQueryAttention's counts from the mask's shape (B, S): seqlens (B,) int32, every row S - 1, and
    S () int32. Computed from the shape as tensors, so an exported graph reads them per call."""
    total = torch.ones_like(attention_mask[0]).sum()  # S
    seqlens = torch.ones_like(attention_mask[:, 0]) * (total - 1)
    return seqlens.to(torch.int32), total.to(torch.int32)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self,
        hidden: torch.Tensor,
        bias: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        in_place: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden: (B, T, E); bias: (B, 1, 1, T, S) from `attention_bias`; past K/V: (B, Hkv, S-T, D).
        in_place: `kv_positions` of the step's mask, for a graph whose attention is onnxruntime's
        GroupQueryAttention node (`Lowering.kv_in_place`: past K/V may then be a longer buffer).

        Returns (B, T, E) and the present K/V (B, Hkv, S, D).
        """
        b, t, _ = hidden.shape
        if in_place is not None:
            q, k, v = self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)
            out, key, value = plugin_nodes.onnxruntime_group_query_attention(
                q, k, v, past_key, past_value, bias[:, :, 0], *in_place, heads=self.heads, kv_heads=self.kv_heads
            )
            return self.o_proj(out), key, value
        q = self.q_proj(hidden).view(b, t, self.kv_heads, -1, self.head_dim).permute(0, 2, 3, 1, 4)  # (B, Hkv, R, T, D)
        k = self.k_proj(hidden).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(hidden).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        key = torch.cat([past_key, k.to(past_key.dtype)], dim=2)  # (B, Hkv, S, D)
        value = torch.cat([past_value, v.to(past_value.dtype)], dim=2)
        scores = torch.matmul(q, key[:, :, None].transpose(-1, -2)) * self.head_dim**-0.5  # (B, Hkv, R, T, S)
        probs = torch.softmax(scores.float() + bias.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, value[:, :, None])  # (B, Hkv, R, T, D)
        out = out.permute(0, 3, 1, 2, 4).reshape(b, t, self.heads * self.head_dim)
        return self.o_proj(out), key, value
