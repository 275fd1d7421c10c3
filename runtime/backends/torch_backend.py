"""The torch step model behind the runtime's one decode loop (runtime/decode.py).

`TorchBackend` offers what every runtime backend offers (runtime/backends/__init__.py), so a torch run and an
exported artifact take the same prefill pieces and decode steps; the tests check the step contract
against transformers' `generate` through it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch

from nemotron_deploy.exporter.modeling.model import NemotronHStepModel
from nemotron_deploy.runtime import decode
from nemotron_deploy.runtime.backends.interface import Backend


class TorchBackend(Backend):
    """step(graph, input_ids, attention_mask, state) on the torch model; states are torch tensors."""

    name = "torch"

    def __init__(self, model: NemotronHStepModel):
        self.model = model

    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        return self.model.initial_state(batch)

    @torch.no_grad()
    def step(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        """input_ids (B, T), attention_mask (B, past+T) int64 -> last-position logits (B, V) fp32 and the next state."""
        device = self.model.embeddings.weight.device
        ids, mask = (torch.as_tensor(x, device=device) for x in (input_ids, attention_mask))
        logits, state = self.model.step(ids, mask, state, graph=graph)
        return logits[:, -1].float().cpu().numpy(), state


def greedy_decode(
    model: NemotronHStepModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, prefill_chunk_size: int | None = None
) -> list[list[int]]:
    """Greedy continuation of each prompt (no EOS stop: exactly `max_new_tokens` tokens each)."""
    result = decode.generate(
        TorchBackend(model), prompts, max_new_tokens=max_new_tokens, max_length=sys.maxsize, prefill_chunk_size=prefill_chunk_size
    )
    return result.new_token_ids
