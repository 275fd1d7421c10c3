"""The step model exports as is: torch.onnx (dynamo) with dynamic batch, new-token and past lengths,
checked on onnxruntime's CPU provider at shapes other than the example, 0- and 1-sized ones included.

(This proves the model traceable; the export command, manifest and runtime are built on it.)
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.checkpoint import load_model
from nemotron_deploy.runtime.artifact.manifest import read_manifest


def _inputs(model, batch, past, new):
    gen = torch.Generator().manual_seed(batch * 100 + past * 10 + new)
    state = model.initial_state(batch)
    if past:
        ids = torch.randint(0, 100, (batch, past), generator=gen)
        _, state = model.step(ids, torch.ones_like(ids), state)
    ids = torch.randint(0, 100, (batch, new), generator=gen)
    mask = torch.ones(batch, past + new, dtype=torch.int64)
    if past + new > 2 and batch > 1:
        mask[1, :2] = 0  # a left-padded row
    return (ids, mask, *(state[s.name] for s in io_spec.state_specs(model.cfg, "past")))


def _session(artifact, graph):
    return ort.InferenceSession(str(read_manifest(artifact).graph_path(graph)), providers=["CPUExecutionProvider"])


def _check(session, model, graph, shapes):
    """The graph against the torch model's step of `graph`; "step" (the onnxruntime target's one graph):
    a decode step for one new token after a past, a prefill step otherwise, as the graph decides. Its
    SSM states are in LinearAttention's layout (B, H, N, P), the torch model's the contract's (B, H, P, N)."""
    names = [i.name for i in session.get_inputs()] + [o.name for o in session.get_outputs()]
    kernel = io_spec.ssm_kernel_layout("onnxruntime", graph)

    def as_graph(name, t):
        return t.transpose(-1, -2) if kernel and name.endswith(".ssm") else t

    for shape in shapes:
        example = _inputs(model, *shape)
        _, past, new = shape
        kind = graph if graph != "step" else ("decode" if new == 1 and past > 0 else "prefill")
        got = session.run(None, {n: as_graph(n, t).contiguous().numpy() for n, t in zip(names, example)})
        for name, g, r in zip(names[len(example) :], got, model(*example, graph=kind)):
            r = as_graph(name, r)
            assert g.shape == tuple(r.shape), shape
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=2e-5, err_msg=str(shape))


@pytest.mark.filterwarnings("ignore")
def test_prefill_and_decode_graphs_export_with_dynamic_shapes(artifacts):
    _, path, artifact = artifacts("hybrid_moe_groups")  # chunk_size 8
    model = load_model(path, "float32")
    # (batch, past, new): one chunk, several, a multiple of chunk_size, batch 1, empty past; a 1-token
    # prompt (a prefill step) and 1-token steps after a past (decode steps): the float32 onnxruntime
    # artifact's one step graph serves both kinds
    assert _session(artifact, "prefill") is not None and read_manifest(artifact).graph("decode").file == "step.onnx"
    shapes = [(1, 0, 2), (3, 5, 13), (2, 0, 16), (1, 4, 5), (4, 9, 30), (2, 0, 1), (2, 3, 1), (1, 1, 1), (3, 11, 1), (5, 2, 1)]
    _check(_session(artifact, "prefill"), model, "step", shapes)
