"""The step model -> one ONNX graph (onnx_ir), traced on the `meta` device: shapes, no weights.

torch.onnx's dynamo exporter runs the model's Python once per graph with fake tensors, so its time
grows with the number of layers (and the ops per layer), not with the weights or the expert count:
every MoE layer is one node (or a fixed handful of ops) whatever its number of experts.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

from nemotron_deploy.exporter import io_spec

OPSET = 18
GRAPHS = ("prefill", "decode")


def example_inputs(model, graph: str):
    """Tracing inputs on the model's device: batch 2, past 3, and for prefill 2 chunks + 3 tokens
    (several chunks, not a multiple of chunk_size), so no dimension is specialised to 0, 1 or a chunk
    multiple."""
    import torch

    cfg = model.cfg
    batch, past = 2, 3
    new = 1 if graph == "decode" else 2 * cfg.chunk_size + 3
    device = model.embeddings.weight.device
    state = model.initial_state(batch)
    for spec in io_spec.state_specs(cfg, "past"):
        if spec.role in ("key", "value"):
            shape = list(state[spec.name].shape)
            shape[2] = past
            state[spec.name] = torch.zeros(shape, dtype=state[spec.name].dtype, device=device)
    ids = torch.zeros(batch, new, dtype=torch.int64, device=device)
    mask = torch.ones(batch, past + new, dtype=torch.int64, device=device)
    return (ids, mask, *(state[s.name] for s in io_spec.state_specs(cfg, "past")))


def dynamic_shapes(cfg, graph: str):
    """torch.export's dynamic dimensions, from the step contract's symbolic shapes."""
    import torch

    dyn = torch.export.Dim.DYNAMIC
    states = tuple({0: dyn, 2: dyn} if s.role in ("key", "value") else {0: dyn} for s in io_spec.state_specs(cfg, "past"))
    ids_dims = {0: dyn} if graph == "decode" else {0: dyn, 1: dyn}
    return (ids_dims, {0: dyn, 1: dyn}, states)


def trace_graph(model, graph: str, target: str = "onnxruntime", on_layer=None):
    """torch.onnx (dynamo) export of one step graph -> onnx_ir Model whose initializers are the
    model's parameters by name (meta tensors when the model is on `meta`).

    on_layer(i): called as the tracer enters layer i (progress).
    """
    import torch

    from nemotron_deploy.exporter.plugin_nodes import export_target

    cfg = model.cfg
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision not installed"
    with contextlib.ExitStack() as stack:
        if on_layer is not None:
            for i, block in enumerate(model.layers):
                hook = block.norm.register_forward_pre_hook(lambda *_, i=i: on_layer(i))
                stack.callback(hook.remove)
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # deprecation chatter from torch's own pytree / exporter internals
        stack.enter_context(export_target(target))
        # custom nodes (torch.onnx.ops.symbolic) make their outputs on the default device: the model's
        stack.enter_context(torch.device(model.embeddings.weight.device))
        try:
            program = torch.onnx.export(
                model, example_inputs(model, graph), dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
                input_names=[s.name for s in io_spec.step_inputs(cfg)],
                output_names=[s.name for s in io_spec.step_outputs(cfg)],
                dynamic_shapes=dynamic_shapes(cfg, graph),
            )  # fmt: skip
        except Exception as e:  # an exporter failure is a bug of ours, but say which graph
            raise RuntimeError(f"torch.onnx.export of the {graph} graph failed: {e}") from e
    program.model.graph.name = f"nemotron_h_{graph}"
    return program.model


def finished_graph(ckpt, model, graph: str, target: str, on_layer=None):
    """Trace one graph and run the graph passes: (onnx_ir Model, {initializer: WeightSpec}).

    The weights are not bound yet (see onnx_export); every weight initializer holds a placeholder.
    """
    from nemotron_deploy.exporter import graph_passes

    ir_model = trace_graph(model, graph, target, on_layer=on_layer)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    specs = graph_passes.weight_specs(ir_model, params)
    graph_passes.fold_weight_layouts(ir_model, specs)
    graph_passes.fold_small_constants(ir_model, set(specs))
    graph_passes.name_by_module(ir_model)
    graph_passes.name_dims(ir_model, model.cfg, graph)
    return ir_model, specs


class BackgroundTrace:
    """`finished_graph` in a second process (spawned: a fresh interpreter, no fork of torch's threads),
    so that two graphs trace at once on a machine with two or more cores. The result comes back as a
    serialized ModelProto whose weights are external-data placeholders, plus the weight specs."""

    def __init__(self, checkpoint_dir, dtype: str, graph: str, target: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_trace_worker, args=(send, str(checkpoint_dir), dtype, graph, target), daemon=True)
        self._proc.start()
        send.close()
        self.graph = graph

    def result(self):
        """(onnx_ir Model, specs, seconds); raises RuntimeError if the worker failed."""
        import onnx
        import onnx_ir as ir

        try:
            status, payload = self._recv.recv()
        except EOFError:
            raise RuntimeError(f"tracing the {self.graph} graph in a second process failed (it exited with {self._proc.exitcode})") from None
        finally:
            self._proc.join()
        if status != "ok":
            raise RuntimeError(f"tracing the {self.graph} graph in a second process failed:\n{payload}")
        proto_bytes, specs, seconds = payload
        return ir.serde.deserialize_model(onnx.ModelProto.FromString(proto_bytes)), specs, seconds

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


def _trace_worker(send, checkpoint_dir: str, dtype: str, graph: str, target: str) -> None:
    import time
    import traceback

    try:
        import onnx_ir as ir

        from nemotron_deploy.exporter.checkpoint import meta_model, open_checkpoint

        start = time.perf_counter()
        ckpt = open_checkpoint(checkpoint_dir)
        ir_model, specs = finished_graph(ckpt, meta_model(ckpt, dtype), graph, target)
        for name in specs:  # placeholders that serialize without data
            value = ir_model.graph.initializers[name]
            value.const_value = ir.ExternalTensor("pending", None, None, value.dtype, shape=value.shape, name=name)
        send.send(("ok", (ir.serde.serialize_model(ir_model).SerializeToString(), specs, time.perf_counter() - start)))
    except BaseException:
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()
