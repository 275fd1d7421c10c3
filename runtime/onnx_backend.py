"""Runs an artifact's step graphs on onnxruntime (CPU by default; CUDA where onnxruntime-gpu is installed).

Both graphs get their weights from one read-only memory map of `weights.data`, handed to
onnxruntime as shared initializers: the weights are on disk once and in memory once.
"""

from __future__ import annotations

import warnings

import numpy as np

from nemotron_deploy.runtime.dtypes import from_onnx
from nemotron_deploy.runtime.manifest import WEIGHTS_FILE, ArtifactError, Manifest, check_graph_inputs, zero_state
from nemotron_deploy.runtime.step_binding import StepBinding



_ONNX_DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64"}


def graph_inputs(model) -> dict[str, tuple[str, list]]:
    """A ModelProto's inputs: name -> (dtype name, dims with symbolic ones as their names)."""
    inputs = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        inputs[value.name] = (_ONNX_DTYPE_NAMES.get(t.elem_type, str(t.elem_type)), dims)
    return inputs


def _check_version(manifest: Manifest, installed: str) -> None:
    """The artifact's `requires.onnxruntime` (oldest version with every op its graphs use) against ours."""
    needed = manifest.requires.get("onnxruntime")

    def parts(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())

    if needed and parts(installed) < parts(needed):
        raise ArtifactError(
            f"{manifest.path}: this artifact needs onnxruntime >= {needed} (its graphs use ops older versions lack); "
            f"onnxruntime {installed} is installed: pip install -U 'onnxruntime>={needed}'"
        )


class OnnxRuntimeBackend:
    """step(graph, input_ids, attention_mask, state) on onnxruntime; states are numpy arrays."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        if manifest.plugins:
            names = ", ".join(p.name for p in manifest.plugins)
            raise ArtifactError(
                f"{manifest.path}: a '{manifest.target}' artifact with plugin nodes ({names}) cannot run on onnxruntime; "
                "use --backend tensorrt (after `nemotron-deploy build`) or --backend reference, or export --target onnxruntime"
            )
        _check_version(manifest, ort.__version__)
        self.manifest = manifest
        available = ort.get_available_providers()
        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ArtifactError(f"onnxruntime provider {missing[0]} is not available here (available: {', '.join(available)})")
        if manifest.dtype == "float16" and providers == ["CPUExecutionProvider"]:
            warnings.warn(
                f"{manifest.path}: a float16 artifact on onnxruntime's CPU provider decodes slower than float32 and holds "
                "float32 copies of its weights (docs/export.md); for a CPU export float32 or --quantize int8|int4",
                stacklevel=3,
            )
        self._weights = self._map_weights()
        self._initializer_values = []  # onnxruntime borrows these buffers: keep them alive
        self.sessions = {}
        for graph in ("prefill", "decode"):
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            values = self._initializers(graph, ort)
            self._initializer_values.append(values)
            for name, value in values.items():
                options.add_initializer(name, value)
            path = manifest.graph_path(graph)
            try:
                self.sessions[graph] = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types for a corrupt model
                raise ArtifactError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:300]})") from None
        self.binding = StepBinding.of(manifest)

    def _map_weights(self) -> np.memmap | None:
        path = self.manifest.path / WEIGHTS_FILE
        return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else None

    def _initializers(self, graph: str, ort) -> dict:
        """OrtValues over the memory map for every external initializer of `graph` (no copies)."""
        import onnx

        path = self.manifest.graph_path(graph)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise ArtifactError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
        check_graph_inputs(self.manifest, graph, graph_inputs(model))
        values = {}
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            offset, length = int(info.get("offset", 0)), int(info["length"])
            if self._weights is None or offset + length > self._weights.size:
                raise ArtifactError(f"{self.manifest.path / WEIGHTS_FILE}: too short for tensor '{tensor.name}' of {path.name}")
            raw = self._weights[offset : offset + length]
            dtype = from_onnx(tensor.data_type).numpy
            array = raw.view(dtype).reshape(tuple(tensor.dims))
            if tensor.data_type == onnx.TensorProto.BFLOAT16:
                values[tensor.name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, tensor.data_type)
            else:
                values[tensor.name] = ort.OrtValue.ortvalue_from_numpy(array)
        return values

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        """Zero states for `batch` new sequences (K/V with past length 0)."""
        return zero_state(self.manifest, batch)

    def step(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        """input_ids (B, T) int64, attention_mask (B, past+T) int64 -> logits (B, V) fp32 and the next state."""
        return self.binding.unpack(self.sessions[graph].run(self.binding.outputs, self.binding.feeds(input_ids, attention_mask, state)))
