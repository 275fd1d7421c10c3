"""Mamba-2 mixer with explicit conv and SSM states.

Legend: B batch, T new tokens, E hidden, C conv channels (= H*P + 2*G*N), K conv kernel,
H heads, P head dim, G groups (B/C shared by H/G heads), N state size, L chunk length.

The mixer is in_proj -> `mamba2_core` -> gated group RMSNorm -> out_proj. `mamba2_core` is the part a
TensorRT plugin replaces; it is written as a free function on plain tensors so the plugin's torch
reference, the export and the tests all use this one definition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_deploy.exporter import plugin_nodes
from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.exporter.modeling.lowering import Lowering
from nemotron_deploy.exporter.modeling.norms import GatedGroupRMSNorm


def causal_conv_step(
    xbc: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv1d + SiLU over T new steps, continuing from `conv_state`.

    xbc: (B, T, C); conv_state: (B, C, K-1), the previous K-1 inputs (zeros for a new sequence);
    weight: (C, K); bias: (C,) or None. Returns (out (B, T, C), new conv_state (B, C, K-1)).
    One formula for prefill and decode: a "valid" conv over [state, new] gives exactly T outputs.
    fused: as onnxruntime's CausalConvWithState node (onnxruntime-target traces only).
    """
    # fp32 whatever the model dtype: more exact, and ONNX Conv (opset < 22) has no bfloat16
    bias = None if bias is None else bias.float()
    if fused:
        out, new_state = plugin_nodes.onnxruntime_causal_conv(xbc.transpose(1, 2).float(), weight.float(), bias, conv_state.float())
        return F.silu(out.transpose(1, 2)).to(xbc.dtype), new_state.to(conv_state.dtype)
    window = torch.cat([conv_state, xbc.transpose(1, 2).to(conv_state.dtype)], dim=-1)  # (B, C, K-1+T)
    new_state = window[:, :, xbc.shape[1] :]
    out = F.conv1d(window.float(), weight.float().unsqueeze(1), bias, groups=weight.shape[0])
    return F.silu(out).transpose(1, 2).to(xbc.dtype), new_state


def ssd_recurrent(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-token SSM update (T = 1), all fp32.

    x: (B, 1, H, P); dt: (B, 1, H) (already softplus'd, clamped, masked); A: (H,);
    Bm, Cm: (B, 1, G, N); state: (B, H, P, N). Returns y (B, 1, H, P) and the new state.
    h' = exp(dt*A) * h + dt * x (outer) B;  y = h' . C
    Heads are viewed as (G, R) so B and C broadcast over a group's R heads (no repeated copies).
    """
    b, _, h, p = x.shape
    g, n = Bm.shape[2], Bm.shape[3]
    r = h // g
    decay = torch.exp(dt[:, 0] * A).view(b, g, r, 1, 1)
    xdt = (dt[:, 0, :, None] * x[:, 0]).view(b, g, r, p, 1)
    new_state = state.view(b, g, r, p, n) * decay + xdt * Bm[:, 0, :, None, None, :]  # (B, G, R, P, N)
    y = torch.matmul(new_state, Cm[:, 0, :, None, :, None])  # (B, G, R, P, 1): batched mat-vecs
    return y.view(b, 1, h, p), new_state.view(b, h, p, n)


def _segsum_exp(cum: torch.Tensor) -> torch.Tensor:
    """exp(cum[..., l] - cum[..., s]) for s <= l, else 0. cum: (..., L) -> (..., L, L)."""
    length = cum.shape[-1]
    diff = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=cum.device).tril()
    return torch.exp(diff.masked_fill(~causal, -torch.inf))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    state: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD algorithm (Mamba-2 paper, "ssd_minimal"), any T, starting from `state`. fp32.

    x: (B, T, H, P); dt: (B, T, H); A: (H,); Bm, Cm: (B, T, G, N); state: (B, H, P, N).
    Returns y (B, T, H, P) and the state after the last token.
    Inputs are padded to a multiple of L with dt = 0 (no decay, no input), so the padded tail leaves
    the final state unchanged; the output is always sliced back to T (never conditionally: an export
    traced at a multiple of L would otherwise drop the slice).
    """
    b, t, h, p = x.shape
    g, n = Bm.shape[2], Bm.shape[3]
    r = h // g
    pad = (chunk_size - t % chunk_size) % chunk_size
    n_chunks = (t + pad) // chunk_size

    def chunks(v: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B, c, L, ...)
        v = F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad))
        return v.reshape(b, n_chunks, chunk_size, *v.shape[2:])

    # Layout (B, G, R, c, L, ...): heads split into groups x heads-per-group, so B/C broadcast over R.
    # Plain matmuls and broadcasts (no multi-operand einsum), which every runtime executes well.
    xdt = chunks(x * dt[..., None]).unflatten(3, (g, r)).permute(0, 3, 4, 1, 2, 5)  # (B, G, R, c, L, P)
    Bc = chunks(Bm).permute(0, 3, 1, 2, 4)[:, :, None]  # (B, G, 1, c, L, N)
    Cc = chunks(Cm).permute(0, 3, 1, 2, 4)[:, :, None]
    cum = torch.cumsum(chunks(dt * A).permute(0, 3, 1, 2), dim=-1).unflatten(1, (g, r))  # (B, G, R, c, L)

    # 1. within each chunk: attention-like form with a decaying causal mask
    scores = torch.matmul(Cc, Bc.transpose(-1, -2))  # (B, G, 1, c, L, L)
    y_diag = torch.matmul(scores * _segsum_exp(cum), xdt)  # (B, G, R, c, L, P)

    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(cum[..., -1:] - cum)[..., None]  # (B, G, R, c, L, 1)
    chunk_states = torch.matmul(xdt.transpose(-1, -2), Bc * decay_to_end)  # (B, G, R, c, P, N)

    # 3. carry states across chunks: state entering chunk j = sum_i<=j decay(i..j) * state_i
    chunk_cum = torch.cumsum(F.pad(cum[..., -1], (1, 0)), dim=-1)  # (B, G, R, c+1): log-decay up to each chunk end
    states = torch.cat([state.unflatten(1, (g, r))[:, :, :, None], chunk_states], dim=3)  # (B, G, R, c+1, P, N)
    states = torch.matmul(_segsum_exp(chunk_cum), states.flatten(-2)).unflatten(-1, (p, n))
    entering, final = states[:, :, :, :-1], states[:, :, :, -1]

    # 4. contribution of the entering state to each position of the chunk
    y_off = torch.matmul(Cc, entering.transpose(-1, -2)) * torch.exp(cum)[..., None]  # (B, G, R, c, L, P)

    y = (y_diag + y_off).permute(0, 3, 4, 1, 2, 5).reshape(b, -1, h, p)[:, :t]
    return y, final.reshape(b, h, p, n)


def _conv_and_split(
    xbc, mask, conv_state, conv_weight, conv_bias, heads: int, head_dim: int, n_groups: int, state_size: int, fused_conv: bool
):
    """Masked conv + SiLU, then the conv output split into x (B, T, H, P), B and C (B, T, G, N), fp32;
    and the new conv state. Padding enters the conv window as zeros (see `mamba2_core`)."""
    m = mask.to(xbc.dtype)[..., None]
    conv_out, new_conv_state = causal_conv_step(xbc * m, conv_state, conv_weight, conv_bias, fused_conv)
    conv_out = conv_out * m
    x, Bm, Cm = conv_out.float().split([heads * head_dim, n_groups * state_size, n_groups * state_size], dim=-1)
    return (
        x.unflatten(-1, (heads, head_dim)),
        Bm.unflatten(-1, (n_groups, state_size)),
        Cm.unflatten(-1, (n_groups, state_size)),
        new_conv_state,
    )


def mamba2_core(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    mask: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    *,
    n_groups: int,
    head_dim: int,
    state_size: int,
    chunk_size: int,
    dt_min: float,
    dt_max: float,
    recurrent: bool = False,
    fused_conv: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conv + SiLU, discretisation and the selective scan of one Mamba-2 layer, with explicit states.

    xbc: (B, T, C) model dtype; dt: (B, T, H) raw dt from in_proj; mask: (B, T) 1 = real, 0 = padding;
    conv_state: (B, C, K-1) model dtype; ssm_state: (B, H, P, N) fp32 (or cache dtype);
    conv_weight: (C, K); conv_bias: (C,); dt_bias, A_log, D: (H,).
    Returns y (B, T, H*P) fp32 (scan output + D skip, before the gated norm), new conv_state, new ssm_state.

    Padding: masked positions enter the conv window as zeros and get dt = 0, so they neither add to nor
    decay the SSM state (left padding is then identical to running the sequence alone).
    recurrent: the one-token recurrent update (T = 1; the decode graph) instead of the chunked scan
    (any T; the prefill graph); the two agree to fp32 rounding. fused_conv: see `causal_conv_step`.
    """
    heads = dt.shape[-1]
    x, Bm, Cm, new_conv_state = _conv_and_split(
        xbc, mask, conv_state, conv_weight, conv_bias, heads, head_dim, n_groups, state_size, fused_conv
    )
    dt = F.softplus(dt.float() + dt_bias.float()).clamp(dt_min, dt_max) * mask.float()[..., None]
    A = -torch.exp(A_log.float())
    state = ssm_state.float()
    if recurrent:
        y, new_state = ssd_recurrent(x, dt, A, Bm, Cm, state)
    else:
        y, new_state = ssd_chunked(x, dt, A, Bm, Cm, state, chunk_size)
    y = y + x * D.float()[:, None]
    return y.flatten(-2), new_conv_state, new_state.to(ssm_state.dtype)


def mamba2_core_step(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    mask: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    decode_step: torch.Tensor,
    *,
    n_groups: int,
    head_dim: int,
    state_size: int,
    chunk_size: int,
    prefill_clamp: tuple[float, float],
    decode_clamp: tuple[float, float],
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mamba2_core` for a graph that serves both step kinds (the onnxruntime target's one step graph).

    Shapes as `mamba2_core`; decode_step: () bool, true for one new token after a past (the rule
    transformers itself applies: its recurrent path, without the dt clamp, runs exactly then).
    Such a step gets the decode clamp, any other the prefill clamp; the scan is one recurrence for
    any T. fused: onnxruntime's CausalConvWithState and LinearAttention (gated) nodes, which run
    prefill and decode alike (2-2.5x faster than the chunked scan and the batched mat-vec update at the
    benchmark model's sizes, docs/export.md); eagerly, the chunked scan or the recurrent update.
    """
    heads = dt.shape[-1]
    x, Bm, Cm, new_conv_state = _conv_and_split(xbc, mask, conv_state, conv_weight, conv_bias, heads, head_dim, n_groups, state_size, fused)
    dt = F.softplus(dt.float() + dt_bias.float())
    low = torch.where(decode_step, decode_clamp[0], prefill_clamp[0])
    dt = torch.maximum(dt, low)
    if math.isfinite(prefill_clamp[1]) or math.isfinite(decode_clamp[1]):
        dt = torch.minimum(dt, torch.where(decode_step, decode_clamp[1], prefill_clamp[1]))
    dt = dt * mask.float()[..., None]
    A = -torch.exp(A_log.float())
    state = ssm_state.float()
    if fused:
        y, new_state = plugin_nodes.onnxruntime_linear_attention(x, dt, A, Bm, Cm, state)
    elif bool(decode_step):
        y, new_state = ssd_recurrent(x, dt, A, Bm, Cm, state)
    else:
        y, new_state = ssd_chunked(x, dt, A, Bm, Cm, state, chunk_size)
    y = y + x * D.float()[:, None]
    return y.flatten(-2), new_conv_state, new_state.to(ssm_state.dtype)


def mamba2_core_attributes(cfg: ModelConfig, decode: bool) -> dict:
    """The hyper-parameters of `mamba2_core` (= the Mamba2Core node's attributes) for one graph.
    The decode graph uses the recurrent path's dt clamp, the prefill graph the chunked path's, whatever
    its T (docs/step-contract.md)."""
    dt_min, dt_max = cfg.dt_clamp_decode if decode else cfg.dt_clamp
    return dict(
        n_groups=cfg.n_groups,
        head_dim=cfg.mamba_head_dim,
        state_size=cfg.ssm_state_size,
        chunk_size=cfg.chunk_size,
        dt_min=float(dt_min),
        dt_max=float(dt_max),
    )


class Mamba2Mixer(nn.Module):
    """in_proj -> [z | xBC | dt] -> mamba2_core -> gated group norm with z -> out_proj."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.mamba_num_heads
        self.in_proj = nn.Linear(cfg.hidden_size, cfg.in_proj_size, bias=cfg.use_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.conv_kernel, groups=cfg.conv_dim, bias=cfg.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.zeros(h))
        self.D = nn.Parameter(torch.ones(h))
        inter = cfg.mamba_intermediate
        self.norm = GatedGroupRMSNorm(inter, inter // cfg.n_groups, cfg.layer_norm_epsilon)
        self.out_proj = nn.Linear(inter, cfg.hidden_size, bias=cfg.use_bias)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
        lowering: Lowering,
        decode_step: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden: (B, T, E); mask: (B, T); decode_step: () bool, for the one-graph `step` kind only
        (`mamba2_core_step`). Returns (B, T, E) and the two new states."""
        cfg = self.cfg
        z, xbc, dt = self.in_proj(hidden).split([cfg.mamba_intermediate, cfg.conv_dim, cfg.mamba_num_heads], dim=-1)
        weights = (self.conv1d.weight[:, 0], self.conv1d.bias, self.dt_bias, self.A_log, self.D)
        attrs = mamba2_core_attributes(cfg, decode=lowering.decode)
        if lowering.plugin_nodes:
            y, conv_state, ssm_state = self._plugin_node(xbc, dt, mask, conv_state, ssm_state, weights, attrs)
        elif lowering.both_kinds:
            clamps = dict(prefill_clamp=cfg.dt_clamp, decode_clamp=cfg.dt_clamp_decode)
            shape = dict(n_groups=cfg.n_groups, head_dim=cfg.mamba_head_dim, state_size=cfg.ssm_state_size, chunk_size=cfg.chunk_size)
            y, conv_state, ssm_state = mamba2_core_step(
                xbc, dt, mask, conv_state, ssm_state, *weights, decode_step, **shape, **clamps, fused=lowering.fused_ops
            )
        else:
            y, conv_state, ssm_state = mamba2_core(
                xbc, dt, mask, conv_state, ssm_state, *weights, **attrs, recurrent=lowering.decode, fused_conv=lowering.fused_ops
            )
        y = self.norm(y, z, lowering.fused_ops)
        return self.out_proj(y.to(hidden.dtype)), conv_state, ssm_state

    def _plugin_node(self, xbc, dt, mask, conv_state, ssm_state, weights, attrs):
        """The Mamba2Core plugin node: ports and dtypes as exporter/plugin_ops.py states them."""
        conv_weight, conv_bias, dt_bias, a_log, d = weights
        if conv_bias is None:
            conv_bias = torch.zeros(conv_weight.shape[0], dtype=conv_weight.dtype)
        b, t = xbc.shape[:2]
        y, conv, ssm = plugin_nodes.plugin_node(
            plugin_nodes.MAMBA2_CORE,
            [xbc, dt, mask, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, a_log, d],
            attrs,
            [(b, t, self.cfg.mamba_intermediate), conv_state.shape, ssm_state.shape],
        )
        return y, conv, ssm.to(ssm_state.dtype)
