"""Runs an artifact's step graphs on onnxruntime (CPU by default; CUDA where onnxruntime-gpu is installed),
with each weight in memory once: see `OnnxRuntimeBackend`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nemotron_deploy.runtime import onnx_prepacked, repeated_rows, resident
from nemotron_deploy.runtime.artifact.dtypes import from_onnx
from nemotron_deploy.runtime.artifact.manifest import GRAPHS, WEIGHTS_FILE, ArtifactError, Manifest, check_graph_inputs, zero_state
from nemotron_deploy.runtime.artifact.step_binding import StepBinding
from nemotron_deploy.runtime.backends.interface import Backend
from nemotron_deploy.runtime.kv_buffers import KVBuffers
from nemotron_deploy.runtime.prefill_budget import PrefillBudget

_ONNX_DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64"}


def graph_inputs(model) -> dict[str, tuple[str, list]]:
    """A ModelProto's inputs: name -> (dtype name, dims with symbolic ones as their names)."""
    inputs = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        inputs[value.name] = (_ONNX_DTYPE_NAMES.get(t.elem_type, str(t.elem_type)), dims)
    return inputs


def _load_graph(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None


def external_ranges(model, location: str | None = None) -> dict[str, tuple[int, int]]:
    """Initializer name -> its (start, end) bytes in the external data file (`location`: that file only)."""
    ranges = {}
    for tensor in model.graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        if "length" in info and location in (None, info.get("location")):
            start = int(info.get("offset", 0))
            ranges[tensor.name] = (start, start + int(info["length"]))
    return ranges


def _gathered_ranges(model, location: str | None = None) -> list[tuple[int, int]]:
    """The file ranges of tables the graph reads a row at a time (the embedding's Gather; for
    GatherBlockQuantized its scales too, a row of them per token), in `location` if given."""
    ranges = external_ranges(model, location)
    tables = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "GatherBlockQuantized") and n.input}
    tables |= {n.input[2] for n in model.graph.node if n.op_type == "GatherBlockQuantized" and len(n.input) > 2}
    return [ranges[name] for name in tables if name in ranges]


def _options(ort, threads: int | None):
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return options


def _session(ort, path: Path, options, providers: list[str]):
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for a corrupt model
        raise ArtifactError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:300]})") from None


def _warn_unfoldable(path: Path, model) -> None:
    """One warning line where opening without the pre-packed cache leaves experts unpacked at every step."""
    names = repeated_rows.unfoldable(model.graph)
    if names:
        warnings.warn(
            f"{path}: without the pre-packed weights cache, onnxruntime does not fold {len(names)} of QMoE's repeated expert "
            f"weights (over its {repeated_rows.FOLD_LIMIT >> 30} GiB folding limit): those layers repeat and read their experts "
            "unpacked at every step, several times slower (docs/export.md); let the cache be built (--cache-dir)",
            stacklevel=5,
        )


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


class OnnxRuntimeBackend(Backend):
    """step(graph, input_ids, attention_mask, state) on onnxruntime; states are numpy arrays.

    One session per graph file: a float32 artifact's one `step` graph serves prefill and decode, so its
    weights are in memory once. Float weights are handed to onnxruntime as views of one read-only
    memory map of weights.data, unpacked (`session.disable_prepacking`: at one token the MatMuls run
    as fast on the stored layout, and a packed copy would double the memory); quantized artifacts load
    the machine's pre-packed cache (runtime/onnx_prepacked.py), whose packed weights onnxruntime maps.
    """

    name = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        providers: list[str] | None = None,
        threads: int | None = None,
        cache: onnx_prepacked.CachePolicy | None = None,
    ):
        """cache: where quantized artifacts' pre-packed weights are cached (default: `CachePolicy()`)."""
        import onnxruntime as ort

        if manifest.plugins:
            names = ", ".join(p.name for p in manifest.plugins)
            raise ArtifactError(
                f"{manifest.path}: a '{manifest.target}' artifact with plugin nodes ({names}) cannot run on onnxruntime; "
                "use --backend tensorrt (after `nemotron-deploy build`) or --backend reference, or export --target onnxruntime"
            )
        _check_version(manifest, ort.__version__)
        self.manifest = manifest
        self.cache = cache or onnx_prepacked.CachePolicy()
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
        self._weights = None
        self._initializer_values = []  # onnxruntime borrows these buffers: keep them alive
        by_file = {}
        for graph in GRAPHS:
            file = manifest.graph(graph).file
            if file not in by_file:
                by_file[file] = self._open(graph, ort, providers, threads)
        self.sessions = {graph: by_file[manifest.graph(graph).file] for graph in GRAPHS}
        resident.trim_heap()  # the buffers session creation freed (packing, graph optimization)
        # one graph for both kinds: a one-token step after a past is a decode step (decode.piece_end)
        self.one_token_is_decode = len(by_file) == 1
        self.binding = StepBinding.of(manifest)
        self._prefill_budget = PrefillBudget.of(manifest)
        # K/V appended in place (export --kv-in-place): runtime/kv_buffers.py
        self._kv = KVBuffers() if manifest.kv_cache == "in_place" else None
        self._ort = ort

    def _open(self, graph: str, ort, providers: list[str], threads: int | None):
        """One session of `graph`'s file, its weights as the class docstring says."""
        path = self.manifest.graph_path(graph)
        model = _load_graph(path)
        check_graph_inputs(self.manifest, graph, graph_inputs(model))
        if onnx_prepacked.packs(self.manifest, providers):
            session = self._open_prepacked(path, ort, providers, threads)
            if session is None:  # the cache off or unusable (one warning said why): packed in memory, as onnxruntime does by default
                _warn_unfoldable(path, model)
                session = _session(ort, path, _options(ort, threads), providers)
            return session
        options = _options(ort, threads)
        options.add_session_config_entry("session.disable_prepacking", "1")
        values = self._initializers(model, path, ort)
        self._initializer_values.append(values)
        for name, value in values.items():
            options.add_initializer(name, value)
        session = _session(ort, path, options, providers)
        resident.random_access(self.manifest.path / WEIGHTS_FILE, _gathered_ranges(model))
        return session

    def _open_prepacked(self, path: Path, ort, providers: list[str], threads: int | None):
        """A session of the pre-packed cache's optimized model (built on first use), or None where the
        cache is off or unusable. An entry onnxruntime refuses (another build's packing, damaged bytes) is
        discarded and built again, once."""
        for attempt in range(2):
            cached = onnx_prepacked.prepacked_model(self.manifest, path.name, self.cache)
            if cached is None:
                return None
            options = _options(ort, threads)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized when cached
            model = _load_graph(cached)
            # the entry's data file and its hard link to weights.data (the initializers it shares with the artifact)
            files = [name for name in (onnx_prepacked.DATA_FILE, onnx_prepacked.SHARED_FILE) if cached.with_name(name).exists()]
            keep = {
                cached.with_name(name): onnx_prepacked.packed_ranges(model) if name == onnx_prepacked.DATA_FILE else [] for name in files
            }
            try:  # what packing reads once (originals re-packed to check the blobs, scales) leaves as it goes
                with resident.dropping(keep):
                    session = _session(ort, cached, options, providers)
            except ArtifactError as e:
                onnx_prepacked.discard(cached, str(e).rsplit("(", 1)[-1].rstrip(")")[:200])
                if attempt:
                    return None
                continue
            for name in files:
                resident.random_access(cached.with_name(name), _gathered_ranges(model, name))
            return session
        return None

    def _map_weights(self) -> np.memmap | None:
        path = self.manifest.path / WEIGHTS_FILE
        return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else None

    def _initializers(self, model, path: Path, ort) -> dict:
        """OrtValues over the memory map for every external initializer of `model` (no copies)."""
        import onnx

        if self._weights is None:
            self._weights = self._map_weights()
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

    def prefill_tokens(self, batch: int, past_len: int) -> int:
        """Prompt tokens for one prefill call after `past_len` tokens (the decode loop's default chunk):
        what keeps its activations within `PrefillBudget` (runtime/prefill_budget.py)."""
        return self._prefill_budget.tokens(batch, past_len)

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        """Zero states for `batch` new sequences (K/V with past length 0)."""
        return zero_state(self.manifest, batch)

    def step(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        """input_ids (B, T) int64, attention_mask (B, past+T) int64 -> logits (B, V) fp32 and the next state."""
        if self._kv is None:
            return self._run(graph, input_ids, attention_mask, state)
        batch, new = input_ids.shape
        if batch > 1 and new > 1 and attention_mask.shape[1] > new:
            return self._rows_one_at_a_time(graph, input_ids, attention_mask, state)
        return self._step_in_place(graph, input_ids, attention_mask, state)

    def _run(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        return self.binding.unpack(self.sessions[graph].run(self.binding.outputs, self.binding.feeds(input_ids, attention_mask, state)))

    def _rows_one_at_a_time(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        """A step of several new tokens after a past for several sequences, a sequence per call:
        GroupQueryAttention (onnxruntime 1.32) refuses it for a batch. Each row's K/V as the step
        contract's (its past positions, contiguous), so the node returns a present of past + new."""
        rows = [
            self._run(
                graph, input_ids[r : r + 1], attention_mask[r : r + 1], {n: np.ascontiguousarray(x[r : r + 1]) for n, x in state.items()}
            )
            for r in range(input_ids.shape[0])
        ]
        logits = np.concatenate([row[0] for row in rows], axis=0)
        return logits, {name: np.concatenate([row[1][name] for row in rows], axis=0) for name in rows[0][1]}

    def _step_in_place(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        """One step whose K/V buffers are bound as both past and present: the step appends to them."""
        total = attention_mask.shape[1]
        binding, io = self.binding, self.sessions[graph].io_binding()
        io.bind_cpu_input(binding.input_ids, np.ascontiguousarray(input_ids))
        io.bind_cpu_input(binding.attention_mask, np.ascontiguousarray(attention_mask))
        io.bind_output(binding.logits)
        buffers = {}
        for s in binding.states:
            if s.grows:
                buffers[s.name] = buf = self._kv.buffer(state[s.name], total)
                value = self._ort.OrtValue.ortvalue_from_numpy(buf)
                io.bind_ortvalue_input(s.name, value)
                io.bind_ortvalue_output(s.present, value)
            else:
                io.bind_cpu_input(s.name, np.ascontiguousarray(state[s.name]))
                io.bind_output(s.present)
        self.sessions[graph].run_with_iobinding(io)
        logits, *presents = io.get_outputs()
        next_state = {
            s.name: self._kv.view(buffers[s.name], total) if s.grows else present.numpy() for s, present in zip(binding.states, presents)
        }
        return logits.numpy()[:, -1], next_state
