"""The TensorRT plugin ops: each plugin's contract (plugins/contract.py) with its torch reference.

The references are the model's own functions (`mamba2_core`, `moe_dispatch` in modeling/): the CUDA
kernels are tested against them (tests/plugins/), the reference backend runs plugin graphs with them
(runtime/backends), and the model calls them itself wherever it does not write a plugin node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nemotron_deploy.exporter.modeling.mamba import mamba2_core
from nemotron_deploy.exporter.modeling.mlp import moe_dispatch
from nemotron_deploy.plugins import contract


@dataclass(frozen=True)
class PluginOp(contract.PluginContract):
    reference: Callable  # (*inputs in port order, **node attributes) -> output or tuple of outputs


def mamba2_core_as_the_kernels(*inputs, **attributes):
    """`mamba2_core` as the Mamba2Core plugin computes it. The node has no graph kind (its attributes
    carry the graph's dt clamp), so its kernels choose by length: the recurrent update for one token
    (decodeKernel), the chunked scan otherwise; the two agree to fp32 rounding."""
    return mamba2_core(*inputs, **attributes, recurrent=inputs[0].shape[1] == 1)


MAMBA2_CORE = PluginOp(**contract.MAMBA2_CORE.as_fields(), reference=mamba2_core_as_the_kernels)
MOE_DISPATCH = PluginOp(**contract.MOE_DISPATCH.as_fields(), reference=moe_dispatch)
PLUGIN_OPS = {op.name: op for op in (MAMBA2_CORE, MOE_DISPATCH)}


def run_reference(op: PluginOp, inputs: list, attributes: dict) -> tuple:
    """Evaluate `op` on torch tensors exactly as a plugin node would (inputs in port order, node attributes);
    returns the outputs as a tuple, in port order."""
    outputs = op.reference(*inputs, **attributes)
    return outputs if isinstance(outputs, tuple) else (outputs,)
