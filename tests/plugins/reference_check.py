"""A plugin's outputs against its torch reference (exporter/plugin_ops.py), through the harness."""

from __future__ import annotations

import torch
from helpers import relative_error

from nemotron_deploy.exporter.plugin_ops import PluginOp, run_reference
from nemotron_deploy.plugins.harness import PluginHarness


def assert_matches_reference(harness: PluginHarness, op: PluginOp, inputs: list[torch.Tensor], attributes: dict, tolerance: float) -> None:
    """Run `op` through the plugin (on the inputs' device) and its torch reference (on the CPU); every
    output must have the reference's shape and dtype and a relative error within `tolerance`."""
    outputs = harness.create(op, attributes).run(inputs)
    expected = run_reference(op, [x.cpu() for x in inputs], attributes)
    for port, got, want in zip(op.outputs, outputs, expected, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype, f"{op.name}.{port.name}: {got.shape} {got.dtype}"
        err = relative_error(got.cpu(), want)
        assert err <= tolerance, f"{op.name}.{port.name}: relative error {err:.2e} > {tolerance:.0e}"
