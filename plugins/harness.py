"""Drive a plugin of the library as TensorRT does, from Python (ctypes over harness/harness.cpp).

With the CUDA library, tensors are CUDA tensors (device buffers); with the CPU-emulation library, CPU
tensors. Outputs and workspace are allocated on the inputs' device from the shapes and size the
plugin reports.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from nemotron_deploy.plugins.contract import PluginContract

MAX_DIMS = 8
# nvinfer1::DataType values
TRT_DTYPE = {torch.float32: 0, torch.float16: 1, torch.int32: 3, torch.bool: 4, torch.bfloat16: 7, torch.int64: 8}
TORCH_DTYPE = {v: k for k, v in TRT_DTYPE.items()}


class HarnessError(RuntimeError):
    pass


def _int_array(values):
    return (ctypes.c_int * max(len(values), 1))(*values)


def _dims_array(shapes):
    flat = []
    for shape in shapes:
        flat += list(shape) + [0] * (MAX_DIMS - len(shape))
    return (ctypes.c_int64 * max(len(flat), 1))(*flat)


def attribute_spec(op: PluginContract, attributes: dict) -> str:
    """ "name=i:3;x=f:0.5": node attributes as the ONNX parser turns them into PluginFields."""
    kinds = {a.name: a.kind for a in op.attributes}
    parts = []
    for name, value in attributes.items():
        kind = kinds.get(name, "float" if isinstance(value, float) else "int")
        parts.append(f"{name}={'i' if kind == 'int' else 'f'}:{int(value) if kind == 'int' else repr(float(value))}")
    return ";".join(parts)


class PluginHarness:
    def __init__(self, harness_library: str | Path, plugin_library: str | Path):
        lib = ctypes.CDLL(str(harness_library))
        lib.ndh_open.restype = ctypes.c_void_p
        lib.ndh_open.argtypes = [ctypes.c_char_p]
        lib.ndh_log.restype = ctypes.c_char_p
        lib.ndh_create.restype = ctypes.c_void_p
        lib.ndh_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.ndh_destroy.argtypes = [ctypes.c_void_p]
        lib.ndh_creators.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.ndh_supports.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.ndh_build.argtypes = (
            [ctypes.c_void_p] + [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] * 2 + [ctypes.c_void_p]
        )
        lib.ndh_runtime.restype = ctypes.c_void_p
        lib.ndh_runtime.argtypes = [ctypes.c_void_p]
        lib.ndh_runtime_destroy.argtypes = [ctypes.c_void_p]
        lib.ndh_enqueue.argtypes = (
            [ctypes.c_void_p] + [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p] * 2 + [ctypes.c_void_p] * 4
        )
        self._lib = lib
        self._handle = lib.ndh_open(str(plugin_library).encode())
        if not self._handle:
            raise HarnessError(self.take_log())

    def take_log(self) -> str:
        text = self._lib.ndh_log().decode()
        self._lib.ndh_clear_log()
        return text

    def creators(self) -> list[dict]:
        buf = ctypes.create_string_buffer(1 << 16)
        self._lib.ndh_creators(self._handle, buf, len(buf))
        out = []
        for line in buf.value.decode().splitlines():
            name, version, namespace, fields = line.split("|")
            out.append(dict(name=name, version=version, namespace=namespace, fields=[tuple(f.split(":")) for f in fields.split(",") if f]))
        return out

    def create(self, op: PluginContract, attributes: dict, spec: str | None = None) -> "Plugin":
        """createPlugin with these node attributes (or a raw `spec`, to send wrongly typed fields);
        HarnessError carries what the plugin logged."""
        self.take_log()
        spec = attribute_spec(op, attributes) if spec is None else spec
        handle = self._lib.ndh_create(self._handle, op.name.encode(), spec.encode())
        if not handle:
            raise HarnessError(self.take_log())
        return Plugin(self, handle, op)


@dataclass
class Built:
    types: list[torch.dtype]
    shapes: list[tuple[int, ...]]
    workspace: int


class Plugin:
    def __init__(self, harness: PluginHarness, handle: int, op: PluginContract):
        self._h = harness
        self._handle = handle
        self.op = op

    def __del__(self):
        if getattr(self, "_handle", None):
            self._h._lib.ndh_destroy(self._handle)

    def supports(self, pos: int, dtypes: list[torch.dtype]) -> bool:
        """supportsFormatCombination(pos) with linear tensors of these dtypes (inputs then outputs)."""
        types = _int_array([TRT_DTYPE[d] for d in dtypes])
        return bool(self._h._lib.ndh_supports(self._handle, pos, len(self.op.inputs), len(self.op.outputs), types))

    def build(self, inputs: list[torch.Tensor]) -> Built:
        n_in, n_out = len(inputs), len(self.op.outputs)
        out_types, out_ranks = _int_array([0] * n_out), _int_array([0] * n_out)
        out_dims = _dims_array([()] * n_out)
        workspace = ctypes.c_size_t(0)
        self._h.take_log()
        status = self._h._lib.ndh_build(
            self._handle,
            n_in,
            _int_array([TRT_DTYPE[t.dtype] for t in inputs]),
            _int_array([t.dim() for t in inputs]),
            _dims_array([t.shape for t in inputs]),
            n_out,
            out_types,
            out_ranks,
            out_dims,
            ctypes.byref(workspace),
        )
        if status != 0:
            raise HarnessError(f"build step {status} failed: {self._h.take_log()}")
        shapes = [tuple(out_dims[i * MAX_DIMS + j] for j in range(out_ranks[i])) for i in range(n_out)]
        return Built([TORCH_DTYPE[out_types[i]] for i in range(n_out)], shapes, workspace.value)

    def prepare(self, inputs: list[torch.Tensor], stream: int = 0) -> "Launch":
        """Build, allocate outputs and workspace on the inputs' device, and create the run-time plugin."""
        inputs = [t.contiguous() for t in inputs]
        built = self.build(inputs)
        device = inputs[0].device
        outputs = [torch.empty(s, dtype=t, device=device) for t, s in zip(built.types, built.shapes)]
        workspace = torch.empty(max(built.workspace, 1), dtype=torch.uint8, device=device)
        runtime = self._h._lib.ndh_runtime(self._handle)
        if not runtime:
            raise HarnessError(f"createPlugin(kRUNTIME) from the serialized fields failed: {self._h.take_log()}")
        return Launch(self._h, runtime, inputs, outputs, workspace, stream)

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """prepare + one enqueue; returns the outputs (synchronised)."""
        launch = self.prepare(inputs)
        launch()
        launch.synchronize()
        return launch.outputs


class Launch:
    """One prepared enqueue, callable repeatedly (benchmarks time these calls)."""

    def __init__(self, harness: PluginHarness, runtime: int, inputs, outputs, workspace, stream: int):
        self._h, self._runtime = harness, runtime
        self.inputs, self.outputs, self.workspace = inputs, outputs, workspace
        self._device = inputs[0].device

        def descs(ts):
            return (
                len(ts),
                _int_array([TRT_DTYPE[t.dtype] for t in ts]),
                _int_array([t.dim() for t in ts]),
                _dims_array([t.shape for t in ts]),
            )

        self._args = (
            *descs(inputs),
            *descs(outputs),
            (ctypes.c_void_p * len(inputs))(*[t.data_ptr() for t in inputs]),
            (ctypes.c_void_p * len(outputs))(*[t.data_ptr() for t in outputs]),
            ctypes.c_void_p(workspace.data_ptr()),
            ctypes.c_void_p(stream),
        )

    def __call__(self) -> None:
        status = self._h._lib.ndh_enqueue(self._runtime, *self._args)
        if status != 0:
            raise HarnessError(f"enqueue returned {status}: {self._h.take_log()}")

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def __del__(self):
        if getattr(self, "_runtime", None):
            self._h._lib.ndh_runtime_destroy(self._runtime)
