"""Grouped-query attention with an explicit K/V cache. NemotronH applies no positional encoding.

Legend: B batch, T new tokens, S = past + T, Hq query heads, Hkv key/value heads, R = Hq / Hkv, D head dim.
"""

from __future__ import annotations

import torch
from torch import nn

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


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self, hidden: torch.Tensor, bias: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden: (B, T, E); bias: (B, 1, 1, T, S) from `attention_bias`; past K/V: (B, Hkv, S-T, D).

        Returns (B, T, E) and the present K/V (B, Hkv, S, D).
        """
        b, t, _ = hidden.shape
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
