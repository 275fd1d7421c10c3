"""Runs a tensorrt-target artifact on the CPU with each plugin node executed by its torch reference.

onnx's ReferenceEvaluator runs the standard ops; `Mamba2Core` / `MoeDispatch` nodes call the same
`mamba2_core` / `moe_dispatch` functions the CUDA kernels are tested against. Greedy tokens of this
backend equal those of the onnxruntime-target export (tests), which proves the wiring of every plugin
node (inputs, attributes, outputs, state threading) without TensorRT. Slow: for checks, not serving.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from nemotron_deploy.exporter.plugin_ops import MAMBA2_CORE, MOE_DISPATCH, PluginOp, run_reference
from nemotron_deploy.runtime.artifact.manifest import GRAPHS, ArtifactError, Manifest, check_graph_inputs, zero_state
from nemotron_deploy.runtime.artifact.step_binding import StepBinding
from nemotron_deploy.runtime.backends.interface import Backend
from nemotron_deploy.runtime.backends.onnxruntime_backend import graph_inputs


def _torch(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x))  # a writable copy: the evaluator hands out read-only views


def _reference_op(op: PluginOp) -> type[OpRun]:
    """An OpRun class named after the plugin, in its domain, evaluating the torch reference."""
    names = [a.name for a in op.attributes]

    def _run(self, *inputs, **_):
        attrs = {name: getattr(self, name) for name in names}
        with torch.no_grad():
            outputs = run_reference(op, [_torch(x) for x in inputs], attrs)
        return tuple(o.numpy() for o in outputs)

    attributes = {name: None for name in names} | {"plugin_version": None, "plugin_namespace": None}
    return type(op.name, (OpRun,), {"op_domain": op.namespace, "_run": _run, **attributes})


PLUGIN_OP_CLASSES = [_reference_op(MAMBA2_CORE), _reference_op(MOE_DISPATCH)]


class PluginReferenceBackend(Backend):
    """step(graph, input_ids, attention_mask, state) over a tensorrt-target artifact; states are numpy."""

    name = "reference"

    def __init__(self, manifest: Manifest):
        import onnx

        self.manifest = manifest
        self.evaluators = {}
        for graph in GRAPHS:
            path = manifest.graph_path(graph)
            try:
                model = onnx.load(str(path))
            except Exception as e:
                raise ArtifactError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
            check_graph_inputs(manifest, graph, graph_inputs(model))
            self.evaluators[graph] = ReferenceEvaluator(model, new_ops=PLUGIN_OP_CLASSES)
        self.binding = StepBinding.of(manifest)

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        return zero_state(self.manifest, batch)

    def step(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        return self.binding.unpack(self.evaluators[graph].run(self.binding.outputs, self.binding.feeds(input_ids, attention_mask, state)))
