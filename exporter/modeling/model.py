"""The NemotronH step model: one call consumes T new tokens of B sequences, every state explicit.

`forward(input_ids, attention_mask, *past_states) -> (logits, *present_states)` with tensors in the
order of `io_spec.step_inputs` / `step_outputs`: flat arguments so `torch.onnx.export` sees plain
tensors, names from the one spec table. Nothing is written in place, and the only Python branches
depend on shapes and the config (layer kinds, T == 1), never on tensor values.
"""

from __future__ import annotations

import torch
from torch import nn

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.exporter.modeling.attention import Attention, attention_bias
from nemotron_deploy.exporter.modeling.mamba import Mamba2Mixer
from nemotron_deploy.exporter.modeling.mlp import MLP, MoE
from nemotron_deploy.exporter.modeling.norms import RMSNorm


def _mixer(cfg: ModelConfig, kind: str) -> nn.Module:
    if kind == "mamba":
        return Mamba2Mixer(cfg)
    if kind == "attention":
        return Attention(cfg)
    if kind == "mlp":
        return MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
    return MoE(cfg)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    def __init__(self, cfg: ModelConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = _mixer(cfg, kind)


class NemotronHStepModel(nn.Module):
    """NemotronH with explicit states. Parameters are named after the Hugging Face checkpoint keys
    (minus the `backbone.` prefix; experts stacked into `experts_up` / `experts_down`)."""

    def __init__(self, cfg: ModelConfig, all_logits: bool = False):
        super().__init__()
        self.cfg = cfg
        self.all_logits = all_logits  # static: part of the exported graph's contract
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, kind) for kind in cfg.layer_types)
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """input_ids: (B, T) int64; attention_mask: (B, past+T) int64; states: `io_spec.state_specs` order.

        Returns logits (B, 1 or T, vocab) fp32, then the present states in the same order.
        """
        t = input_ids.shape[1]
        hidden = self.embeddings(input_ids)
        new_mask = attention_mask[:, -t:]
        bias = attention_bias(attention_mask, t, hidden.dtype) if "attention" in self.cfg.layer_types else None
        presents: list[torch.Tensor] = []
        it = iter(states)
        for block in self.layers:
            x = block.norm(hidden)
            if block.kind == "mamba":
                x, conv, ssm = block.mixer(x, new_mask, next(it), next(it))
                presents += [conv, ssm]
            elif block.kind == "attention":
                x, key, value = block.mixer(x, bias, next(it), next(it))
                presents += [key, value]
            else:
                x = block.mixer(x)
            hidden = hidden + x
        if not self.all_logits:
            hidden = hidden[:, -1:]
        logits = self.lm_head(self.norm_f(hidden)).float()
        return (logits, *presents)

    # ------------------------------------------------------------------ conveniences for Python callers
    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        """Zero states for `batch` new sequences (K/V with zero past length), keyed by `past.*` names."""
        state = {}
        for spec in io_spec.state_specs(self.cfg, "past"):
            shape = [batch if d == "batch" else 0 if isinstance(d, str) else d for d in spec.shape]
            dtype = self.dtype if spec.dtype == "model" else getattr(torch, spec.dtype)
            state[spec.name] = torch.zeros(shape, dtype=dtype, device=self.embeddings.weight.device)
        return state

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step with a dict state: `past.*` in, next `past.*` out (renamed from `present.*`)."""
        names = [s.name for s in io_spec.state_specs(self.cfg, "past")]
        logits, *presents = self(input_ids, attention_mask, *(state[n] for n in names))
        return logits, dict(zip(names, presents))
