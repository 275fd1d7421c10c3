"""RMS norms of NemotronH, computed in float32 like the reference."""

import torch
from torch import nn

from nemotron_deploy.exporter import plugin_nodes


class RMSNorm(nn.Module):
    """y = weight * x / rms(x), over the last dim. x: (..., E) any float dtype; y: same dtype.
    fused: as onnxruntime's one RMSNormalization node (onnxruntime-target traces only)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        x32 = x.float()
        if fused:
            return plugin_nodes.onnxruntime_rms_norm(x32, self.weight.float(), self.eps).to(x.dtype)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # The weight multiply stays in fp32 and only the result is cast back (as the reference does).
        return (self.weight.float() * x32).to(x.dtype)


class GatedGroupRMSNorm(nn.Module):
    """Mamba-2's output norm: RMS-normalise (y * silu(z)) within groups of `group_size` channels.

    y, z: (..., H*P). The gate is applied before the norm (norm_before_gate=False in mamba_ssm).
    Returns (..., H*P) in y's dtype. fused: as in `RMSNorm`.
    """

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor, fused: bool = False) -> torch.Tensor:
        h = y.float() * nn.functional.silu(z.float())
        groups = h.unflatten(-1, (-1, self.group_size))
        if fused:  # the norm fused, with unit scale: the weight spans groups
            unit = torch.ones(self.group_size, dtype=torch.float32, device=h.device)
            groups = plugin_nodes.onnxruntime_rms_norm(groups, unit, self.eps)
        else:
            groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.flatten(-2).to(y.dtype)
