"""Greedy decoding with the torch step model: left-padded prefill (optionally in pieces), then T = 1 steps.

This is the PyTorch reference of the decode loop that the runtime runs on exported engines; the
tests use it to check the step contract against transformers' `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nemotron_deploy.exporter.modeling.model import NemotronHStepModel
from nemotron_deploy.runtime import decode as runtime_decode


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> input_ids (B, T) and attention_mask (B, T), padding on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    ids, mask = runtime_decode.left_pad(prompts, pad_id)  # the runtime's own padding, as torch tensors
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.no_grad()
def prefill(
    model: NemotronHStepModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    piece_lengths: Sequence[int] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Run the prompt through the model, in one step or in pieces of `piece_lengths` tokens.

    ids, mask: (B, T). Returns last-position logits (B, 1, V), the state, and the mask over the past.
    """
    state = model.initial_state(ids.shape[0])
    pieces = list(piece_lengths) if piece_lengths else [ids.shape[1]]
    if sum(pieces) != ids.shape[1] or min(pieces) < (2 if len(pieces) > 1 else 1):
        # a 1-token step is a decode step (see ModelConfig.dt_clamp_decode), so pieces need >= 2 tokens
        raise ValueError(f"piece lengths {pieces} must be >= 2 and sum to the prompt length {ids.shape[1]}")
    start = 0
    logits = None
    for length in pieces:
        end = start + length
        logits, state = model.step(ids[:, start:end], mask[:, :end], state)
        start = end
    return logits[:, -1:], state, mask


@torch.no_grad()
def greedy_decode(
    model: NemotronHStepModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    piece_lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt (no EOS stop: exactly `max_new_tokens` tokens each)."""
    ids, mask = left_pad(prompts)
    logits, state, mask = prefill(model, ids, mask, piece_lengths)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        token = logits[:, -1].argmax(-1)  # (B,)
        for row, t in enumerate(token.tolist()):
            out[row].append(t)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, state = model.step(token[:, None], mask, state)
    return out
