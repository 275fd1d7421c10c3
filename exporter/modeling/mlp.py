"""Dense relu2 MLP and the routed mixture of experts.

Legend: N tokens (B*T flattened), E hidden, X expert count, k experts per token, I expert width,
Din expert input width (= moe_latent_size when latent projections exist, else E), G router groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_deploy.exporter import plugin_nodes
from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.exporter.modeling.lowering import Lowering


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


class MLP(nn.Module):
    """down(relu(up(x))^2): NemotronH's non-gated MLP (the `-` layers and the shared expert)."""

    def __init__(self, hidden: int, inter: int, bias: bool):
        super().__init__()
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(relu2(self.up_proj(x)))


def route(
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-limited top-k sigmoid routing (DeepSeek-V3 style), all in fp32.

    logits: (N, X) fp32 router logits; correction_bias: (X,) fp32, used for the choice only.
    A group's score is the sum of its two best (biased) experts; only the best `topk_group` groups
    compete. Weights come from the un-biased sigmoid, renormalised if `norm_topk_prob`, times `scaling`.
    Returns (indices (N, k) int64, weights (N, k) fp32).
    """
    scores = torch.sigmoid(logits.float())  # (N, X)
    choice = scores + correction_bias.float()
    if topk_group < n_group:
        choice = _best_groups_only(choice, n_group, topk_group)
    indices = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, indices)
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return indices, weights * scaling


def _best_groups_only(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """choice (N, X) with the experts outside the best `topk_group` of `n_group` groups set to -inf.
    (With every group kept this is the identity: the caller skips it, seven nodes per layer fewer.)"""
    groups = choice.unflatten(-1, (n_group, -1))  # (N, G, X/G)
    group_scores = groups.topk(2, dim=-1).values.sum(-1) if n_group > 1 else groups[..., 0]
    best_groups = group_scores.topk(topk_group, dim=-1).indices  # (N, topk_group)
    keep = F.one_hot(best_groups, n_group).sum(1) > 0  # (N, G)
    return groups.masked_fill(~keep[..., None], -torch.inf).flatten(1)


def route_by_attributes(
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: int,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`route` with the MoeDispatch node's attribute names (`moe_dispatch_attributes`)."""
    return route(
        logits,
        correction_bias,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=bool(norm_topk_prob),
        scaling=routed_scaling_factor,
    )


def routed_experts_gather(
    h: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, up: torch.Tensor, down: torch.Tensor, up_row_step: int = 1
) -> torch.Tensor:
    """sum_k weights[:, k] * down_e(relu2(up_e(h))) with e = indices[:, k], by gathering weights per token.

    h: (N, Din); indices, weights: (N, k); up: (X, I * up_row_step, Din), of which every
    `up_row_step`-th row is used (the onnxruntime MoE node's layout repeats each row twice);
    down: (X, Din, I). Returns (N, Din) fp32.
    Static shapes, and a decode step reads only the k selected experts: the decode formulation.
    (It gathers N*k expert matrices, far too many for a long prompt.)
    """
    n, k = indices.shape
    flat = indices.reshape(-1)
    # Row gathers (ONNX Gather) and batched mat-vec products: no layout change of the gathered weights.
    up_sel = up.index_select(0, flat).view(n, k, up.shape[1], up.shape[2])  # (N, k, I * step, Din)
    act = relu2(torch.matmul(up_sel, h[:, None, :, None])[:, :, ::up_row_step])  # (N, k, I, 1)
    down_sel = down.index_select(0, flat).view(n, k, down.shape[1], down.shape[2])  # (N, k, Din, I)
    out = torch.matmul(down_sel, act)[..., 0]  # (N, k, Din)
    return (out.float() * weights[..., None]).sum(1)


def routed_experts_loop(
    h: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """The same sum, expert by expert over only the tokens routed to it: the prefill formulation.

    Shapes as `routed_experts_gather`. Exactly N*k token-expert products; the per-expert token count
    is data-dependent (NonZero in ONNX), the loop over experts is unrolled (static expert count).
    """
    out = torch.zeros(h.shape[0], h.shape[1], dtype=torch.float32, device=h.device)
    # The expert index is derived from an input (an empty sum) so that ONNX constant folding cannot
    # turn up[e] into a per-expert copy of the weights: both graphs then share the stacked tensors.
    zero = indices[:0].sum()
    for e in range(up.shape[0]):
        token, slot = torch.where(indices == e)
        act = relu2(F.linear(h[token], up[zero + e]))
        y = F.linear(act, down[zero + e]).float() * weights[token, slot, None]
        out = out.index_add(0, token, y)
    return out


def routed_experts_dense(
    h: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """The same sum with every expert computed on every token and all but the top-k weighted by zero.

    Shapes as `routed_experts_gather`. X/k times the FLOPs, but static shapes and no gathers: the
    prefill formulation for TensorRT for RTX (no NonZero there). Weights are used as stored (the
    activations are transposed instead), so the artifact holds no transposed copy of the experts.
    """
    w = torch.zeros(h.shape[0], up.shape[0], dtype=torch.float32, device=h.device).scatter(1, indices, weights)  # (N, X)
    act = relu2(torch.matmul(up, h.t()))  # (X, I, N)
    y = torch.matmul(down, act)  # (X, Din, N)
    return (y.float() * w.t()[:, None, :]).sum(0).t()


ROUTED_EXPERTS = {"gather": routed_experts_gather, "loop": routed_experts_loop, "dense": routed_experts_dense}


def moe_dispatch(
    h: torch.Tensor,
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: int,
    routed_scaling_factor: float,
    experts: str = "loop",
) -> torch.Tensor:
    """Routing + routed experts + weighted combine: the op the MoeDispatch plugin replaces.

    h: (N, Din) model dtype; logits: (N, X) fp32; correction_bias: (X,) fp32; up: (X, I, Din) and
    down: (X, Din, I) model dtype. Returns (N, Din) fp32. The keywords but `experts` are the plugin node's
    attributes (`moe_dispatch_attributes`). `experts` only picks the formulation of the same sum, the one that
    exports best for the graph (`Lowering.moe`): "gather" for decode, "loop" (per expert) for prefill,
    "dense" (every expert on every token) for TensorRT for RTX's prefill.
    The shared expert and the latent projections stay outside (plain matmuls).
    """
    indices, weights = route_by_attributes(
        logits,
        correction_bias,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
    )
    return ROUTED_EXPERTS[experts](h, indices, weights, up, down)


def moe_dispatch_onnxruntime(
    h: torch.Tensor,
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    *,
    decode: bool = False,
    **attributes,
) -> torch.Tensor:
    """`moe_dispatch` as the onnxruntime target exports it: the same routing (traced ops), then the
    routed experts as one `com.microsoft.MoE` node, so the graph does not grow with the expert count.

    Shapes as `moe_dispatch`; the experts' `up` is stored with each row twice (the node's layout).
    The node returns sum_k w/sum(w) * expert: multiplied back by sum(w). float16 decode gathers the k
    experts instead: onnxruntime's float16 MoE node was ~10x slower than float32 at one token in a
    probe (docs/export.md), a cost a prompt amortises but a decode step does not.
    attributes: the MoeDispatch node's (`moe_dispatch_attributes`).
    """
    top_k = attributes["top_k"]
    indices, weights = route_by_attributes(logits, correction_bias, **attributes)
    fc1 = plugin_nodes.stored_repeat_rows(up, 2)  # (X, 2I, Din)
    if decode and h.dtype == torch.float16:
        return routed_experts_gather(h, indices, weights, fc1, down, up_row_step=2)
    probs = torch.full(logits.shape, -torch.inf, dtype=h.dtype, device=h.device)
    probs = probs.scatter(1, indices, weights.log().to(h.dtype))
    routed = plugin_nodes.onnxruntime_moe(h, probs, fc1, down, top_k)
    return routed.float() * weights.sum(-1, keepdim=True)


def moe_dispatch_attributes(cfg: ModelConfig) -> dict:
    """The MoeDispatch node's attributes (the routing hyper-parameters of `moe_dispatch`)."""
    return dict(
        top_k=cfg.num_experts_per_tok,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        norm_topk_prob=int(cfg.norm_topk_prob),
        routed_scaling_factor=float(cfg.routed_scaling_factor),
    )


class MoE(nn.Module):
    """Routed experts (optionally inside latent projections) plus a shared expert on the input."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        x, inter, din = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.moe_input_size
        self.router_weight = nn.Parameter(torch.zeros(x, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(x, dtype=torch.float32))
        self.experts_up = nn.Parameter(torch.zeros(x, inter, din))
        self.experts_down = nn.Parameter(torch.zeros(x, din, inter))
        latent = cfg.moe_latent_size is not None
        self.fc1_latent_proj = nn.Linear(cfg.hidden_size, din, bias=cfg.mlp_bias) if latent else nn.Identity()
        self.fc2_latent_proj = nn.Linear(din, cfg.hidden_size, bias=cfg.mlp_bias) if latent else nn.Identity()
        shared = cfg.n_shared_experts > 0
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_shared_expert_intermediate_size, cfg.mlp_bias) if shared else None

    def forward(self, hidden: torch.Tensor, lowering: Lowering) -> torch.Tensor:
        """hidden: (B, T, E) -> (B, T, E); the routed experts as `lowering.moe` says."""
        cfg = self.cfg
        flat = hidden.flatten(0, 1)  # (N, E)
        logits = F.linear(flat.float(), self.router_weight.float())  # fp32 router, as the reference
        inputs = (self.fc1_latent_proj(flat), logits, self.e_score_correction_bias, self.experts_up, self.experts_down)
        attrs = moe_dispatch_attributes(cfg)
        if lowering.moe == "plugin":
            (routed,) = plugin_nodes.plugin_node(plugin_nodes.MOE_DISPATCH, inputs, attrs, [inputs[0].shape])
        elif lowering.moe == "onnxruntime":
            routed = moe_dispatch_onnxruntime(*inputs, **attrs, decode=lowering.decode)
        else:
            routed = moe_dispatch(*inputs, **attrs, experts=lowering.moe)
        out = self.fc2_latent_proj(routed.to(hidden.dtype)).view_as(hidden)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden)
        return out
