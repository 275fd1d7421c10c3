"""The NemotronH step model: one call consumes T new tokens of B sequences, every state explicit.

`StepGraph(model, kind, target)` is one step graph (kind prefill | decode | step: modeling/lowering.py), `forward(input_ids, attention_mask, *past_states)
-> (logits, *present_states)` with tensors in the order of `io_spec.step_inputs` / `step_outputs`:
flat arguments so `torch.onnx.export` sees plain tensors, names from the one spec table. The graph kind
(prefill | decode) is explicit and never inferred from T (exporter/modeling/lowering.py). Nothing is
written in place, and the only Python branches depend on shapes, the config (layer kinds) and the
graph's `Lowering`, never on tensor values.
"""

from __future__ import annotations

import torch
from torch import nn

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.exporter.modeling.attention import Attention, attention_bias, kv_positions
from nemotron_deploy.exporter.modeling.lowering import Lowering
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


class Residual(nn.Module):
    """hidden + x, as a module so that a traced graph names the add after its layer
    (`layers.3.residual`): exporter/stitch.py finds each layer's nodes, its output included, by name."""

    def forward(self, hidden: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return hidden + x


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    def __init__(self, cfg: ModelConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = _mixer(cfg, kind)
        self.residual = Residual()


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

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *states: torch.Tensor, graph: str = "prefill"
    ) -> tuple[torch.Tensor, ...]:
        """`graph`'s step computed eagerly (see `StepGraph`)."""
        return StepGraph(self, graph)(input_ids, attention_mask, *states)

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
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: dict[str, torch.Tensor], graph: str = "prefill"
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step of `graph` ("prefill": any T; "decode": T = 1) with a dict state: `past.*` in, next
        `past.*` out (renamed from `present.*`)."""
        names = [s.name for s in io_spec.state_specs(self.cfg, "past")]
        logits, *presents = self(input_ids, attention_mask, *(state[n] for n in names), graph=graph)
        return logits, dict(zip(names, presents))


class StepGraph(nn.Module):
    """One step graph of `model`: what `torch.onnx.export` traces for `target`, or (target None) what an
    eager step of that kind computes. It holds the model's modules, not the model, so parameter names
    and the traced graph's node names are the model's own (`layers.0.mixer.in_proj.weight`)."""

    def __init__(
        self,
        model: NemotronHStepModel,
        kind: str,
        target: str | None = None,
        layers: tuple[int, ...] | None = None,
        kv_in_place: bool = False,
    ):
        """layers: the model's layers this graph runs, in order (default all). A subset is what
        exporter/stitch.py traces: one layer of each kind, copied into the whole graph afterwards; its
        states are those layers' only. kv_in_place: see `Lowering`."""
        super().__init__()
        self.cfg, self.all_logits, self.lowering = model.cfg, model.all_logits, Lowering(kind, target, kv_in_place)
        self.embeddings, self.layers, self.norm_f, self.lm_head = model.embeddings, model.layers, model.norm_f, model.lm_head
        self.layer_ids = tuple(range(len(model.layers))) if layers is None else tuple(layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """input_ids: (B, T) int64, T = 1 for decode; attention_mask: (B, past+T) int64; states:
        `io_spec.state_specs` order. Returns logits (B, 1 or T, vocab) fp32, then the present states in
        the same order."""
        lowering, t = self.lowering, input_ids.shape[1]
        lowering.check(t)
        hidden = self.embeddings(input_ids)
        new_mask = attention_mask[:, -t:]
        decode_step = _one_token_after_past(input_ids, attention_mask) if lowering.both_kinds else None
        kinds = {self.layers[i].kind for i in self.layer_ids}
        bias = attention_bias(attention_mask, t, hidden.dtype) if "attention" in kinds else None
        in_place = kv_positions(attention_mask) if lowering.kv_in_place and "attention" in kinds else None
        presents: list[torch.Tensor] = []
        it = iter(states)
        for block in (self.layers[i] for i in self.layer_ids):
            x = block.norm(hidden, lowering.fused_ops)
            if block.kind == "mamba":
                x, conv, ssm = block.mixer(x, new_mask, next(it), next(it), lowering, decode_step)
                presents += [conv, ssm]
            elif block.kind == "attention":
                x, key, value = block.mixer(x, bias, next(it), next(it), in_place)
                presents += [key, value]
            elif block.kind == "moe":
                x = block.mixer(x, lowering)
            else:
                x = block.mixer(x)
            hidden = block.residual(hidden, x)
        if not self.all_logits:
            hidden = hidden[:, -1:]
        logits = self.lm_head(self.norm_f(hidden, lowering.fused_ops)).float()
        return (logits, *presents)


def _one_token_after_past(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """() bool: this step is one new token after a past (a decode step), from the shapes of the step's
    inputs, as a tensor: an exported graph decides it per call, not at trace time."""
    new = torch.ones_like(input_ids[0]).sum()  # T
    total = torch.ones_like(attention_mask[0]).sum()  # past + T
    return (new == 1) & (total > new)
