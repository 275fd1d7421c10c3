"""Which step graph the model computes and which export target it is traced for: the one place that
chooses each layer's formulation.

The two graphs of an artifact differ in kind, not in their token count: `prefill` takes any T (a
1-token prompt piece included) and `decode` one token per sequence. Torch runs and exported graphs
compute the same thing for the same kind; the target only adds fused nodes to a traced graph.
The onnxruntime target's float32 artifacts hold one graph, `step`, that serves both kinds (one
onnxruntime session, so each weight is in memory once: docs/export.md); it tells a decode step from
a prefill step by its inputs, as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemotron_deploy.runtime.artifact.manifest import GRAPHS

STEP = "step"  # the graph kind that serves both GRAPHS (`Lowering.both_kinds`)


@dataclass(frozen=True)
class Lowering:
    """kind: "prefill" | "decode" | "step"; target: the export target being traced ("onnxruntime" | "tensorrt" |
    "tensorrt-rtx"), or None for an eager torch run (fused and plugin nodes exist only in a trace).

    prefill: the chunked SSD scan with the prefill dt clamp (`ModelConfig.dt_clamp`), the MoE's experts
    one by one over their tokens. decode: the recurrent state update with the decode dt clamp
    (`dt_clamp_decode`), the MoE gathering each token's k experts. step: any T; one new token after a
    past is a decode step (recurrent update, decode clamp), any other step a prefill step
    (`mamba2_core_step`); the MoE's experts as for prefill.

    kv_in_place: attention as onnxruntime's GroupQueryAttention node, whose K/V cache a runtime can bind
    as one buffer that each step appends to in place (`export --kv-in-place`; the onnxruntime target's
    `step` graph only).
    """

    kind: str
    target: str | None = None
    kv_in_place: bool = False

    def __post_init__(self):
        if self.kind not in (*GRAPHS, STEP):
            raise ValueError(f"graph {self.kind!r}: expected one of {(*GRAPHS, STEP)}")
        if self.kv_in_place and (self.target != "onnxruntime" or self.kind != STEP):
            raise ValueError(f"K/V in place: the onnxruntime target's {STEP} graph only, not {self.target}'s {self.kind}")

    def check(self, new_tokens: int) -> None:
        """Refuse a step this graph does not compute: several tokens per sequence in a decode step (static
        in a trace: the decode graph fixes T to 1), or an eager run of a graph with custom nodes."""
        import torch

        if self.decode and new_tokens != 1:
            raise ValueError(f"a decode step takes one token per sequence, not {new_tokens}")
        if (self.plugin_nodes or self.fused_ops or self.kv_in_place) and not torch.onnx.is_in_onnx_export():
            raise RuntimeError(
                f"the {self.target} graph holds custom nodes that only an ONNX export writes; run it eagerly without a target"
            )

    @property
    def decode(self) -> bool:
        return self.kind == "decode"

    @property
    def both_kinds(self) -> bool:
        """One graph for prefill and decode steps (kind `step`)."""
        return self.kind == STEP

    @property
    def plugin_nodes(self) -> bool:
        """The Mamba-2 core and the MoE dispatch as TensorRT plugin nodes (exporter/plugin_nodes.py)."""
        return self.target == "tensorrt"

    @property
    def fused_ops(self) -> bool:
        """onnxruntime's fused ops where it has them: RMSNormalization, CausalConvWithState, com.microsoft.MoE."""
        return self.target == "onnxruntime"

    @property
    def moe(self) -> str:
        """The routed experts' formulation: "plugin" (MoeDispatch node), "onnxruntime" (its MoE node:
        `moe_dispatch_onnxruntime`), or `moe_dispatch`'s "gather" | "loop" | "dense"."""
        if self.plugin_nodes:
            return "plugin"
        if self.fused_ops:
            return "onnxruntime"
        if self.decode:
            return "gather"
        # TensorRT for RTX runs NonZero (the loop's per-expert token lists) only as a plugin, which it
        # cannot load: every expert on every token, all but the top-k weighted by zero
        return "dense" if self.target == "tensorrt-rtx" else "loop"
