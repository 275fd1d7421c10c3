"""Runs an artifact's TensorRT engines (`nemotron-deploy build`) on the GPU, behind the same decode loop.

States stay on the device from step to step (each step's present.* buffers become the next step's
past.* inputs; nothing but the token ids, the mask and the last logits crosses to or from the host).
Outputs are bound to buffers from torch's CUDA caching allocator, which hands the same memory back
step after step. Where every state has a fixed shape (no attention layers: the K/V cache grows), the
decode step of each batch size is captured in two CUDA graphs over ping-pong state buffers and replayed.

Needs torch with CUDA (device memory, streams, graphs) and the engine's TensorRT package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nemotron_deploy.plugins.tensorrt_common import ENGINES, TensorRTError, import_engine, load_plugins, make_logger, plugin_library_path
from nemotron_deploy.runtime.artifact.dtypes import from_tensorrt
from nemotron_deploy.runtime.artifact.manifest import GRAPHS, ArtifactError, EngineRecord, Manifest, initial_state_shapes
from nemotron_deploy.runtime.backends.interface import Backend


def pick_engine(manifest: Manifest, engine: str | None) -> tuple[str, EngineRecord]:
    """The engine kind to run and its build record; a clear error when the artifact has none."""
    built = manifest.engines
    if engine is not None and engine not in ENGINES:
        raise TensorRTError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    kinds = [engine] if engine else [k for k in ENGINES if k in built]
    if not kinds or kinds[0] not in built:
        what = f"no {engine} engines" if engine else "no TensorRT engines"
        raise ArtifactError(
            f"{manifest.path}: {what}; build them first: nemotron-deploy build {manifest.path} --engine {engine or 'tensorrt'}"
        )
    return kinds[0], built[kinds[0]]


def check_trt_version(record: EngineRecord, trt_version: str, plan: Path) -> None:
    """A .plan runs only on the TensorRT version it was built with: say so before TensorRT fails."""
    if record.version != trt_version:
        raise ArtifactError(f"{plan}: built with TensorRT {record.version}, this is {trt_version}; rebuild with `nemotron-deploy build`")


def check_gpu(record: EngineRecord, device_capability: str, device_name: str, plan: Path) -> None:
    """... and only on the GPU architecture it was built for."""
    target = record.compute_capability
    target = record.built_on if target in (None, "native") else target
    if target and target != device_capability:
        raise ArtifactError(
            f"{plan}: built for compute capability {target}, this GPU ({device_name}) is {device_capability}; "
            "rebuild on (or for) this GPU with `nemotron-deploy build`"
        )


class TensorRTBackend(Backend):
    """step(graph, input_ids, attention_mask, state) on TensorRT engines; states are torch CUDA tensors."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, engine: str | None = None, plugins: str | Path | None = None, device: int = 0):
        import torch

        # What can be checked without a GPU first: engines built, TensorRT version, plugin library.
        self.torch = torch
        self.manifest = manifest
        self.kind, self.record = pick_engine(manifest, engine)
        trt = import_engine(self.kind)
        plans = [manifest.path / self.record.graphs[g].file for g in GRAPHS]
        check_trt_version(self.record, trt.__version__, plans[0])
        library = None
        if manifest.plugins:
            library = plugin_library_path(manifest, plugins, (self.record.plugins or {}).get("library"))
        if not torch.cuda.is_available():
            raise TensorRTError("--backend tensorrt needs a CUDA GPU and torch with CUDA; none is available here")
        self.device = torch.device("cuda", device)
        capability = "".join(map(str, torch.cuda.get_device_capability(self.device)))
        check_gpu(self.record, capability, torch.cuda.get_device_name(self.device), plans[0])
        self.logger = make_logger(trt)
        runtime = trt.Runtime(self.logger)
        if library is not None:
            load_plugins(trt, runtime.get_plugin_registry(), manifest, library)
        self.engines, self.contexts = {}, {}
        for graph, plan in zip(GRAPHS, plans):
            engine_obj = runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine_obj is None:
                raise ArtifactError(f"{plan}: TensorRT could not deserialize it ({self.logger.last_error() or 'no message'})")
            self.engines[graph] = engine_obj
            self.contexts[graph] = engine_obj.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self.state_names = [s.name for s in manifest.states]
        self.present_names = [s.present for s in manifest.states]
        self.max_batch = self.record.max_batch
        self.max_prefill_tokens = self.record.max_new_tokens  # the prefill profile's; decode.prefill splits by it
        self.max_seq_len = self.record.max_seq_len
        # CUDA graphs need fixed shapes: only when no state grows (no attention layers)
        self.graphable = not any(s.grows for s in manifest.states)
        self._graphs: dict[int, tuple] = {}

    # -- states -------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> dict:
        """Zero states on the device for `batch` new sequences (K/V with past length 0)."""
        if batch > self.max_batch:
            raise TensorRTError(f"batch {batch}: the engines were built for at most {self.max_batch} (nemotron-deploy build --max-batch)")
        torch = self.torch
        return {
            name: torch.zeros(shape, dtype=getattr(torch, dtype), device=self.device)
            for name, (shape, dtype) in initial_state_shapes(self.manifest, batch).items()
        }

    def state_from_host(self, state: dict[str, np.ndarray]) -> dict:
        """A snapshot's host states (runtime/snapshot.py) as device tensors of the manifest's dtypes
        (bfloat16 arrives as its raw 16-bit patterns)."""
        torch, out = self.torch, {}
        for record in self.manifest.states:
            host = np.ascontiguousarray(state[record.name])
            tensor = torch.from_numpy(host.view(np.int16)).view(torch.bfloat16) if record.dtype == "bfloat16" else torch.from_numpy(host)
            out[record.name] = tensor.to(self.device)
        return out

    # -- one step -------------------------------------------------------------------------------------
    def step(self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        """input_ids (B, T), attention_mask (B, past+T) int64 on the host -> logits (B, V) on the host
        and the next state (on the device)."""
        total, new = attention_mask.shape[1], input_ids.shape[1]
        if total > self.max_seq_len:
            raise TensorRTError(
                f"{total} tokens: the engines were built for at most {self.max_seq_len} (nemotron-deploy build --max-seq-len)"
            )
        if graph == "prefill" and new > self.max_prefill_tokens:
            raise TensorRTError(
                f"{new} prompt tokens in one call: the prefill engine takes at most {self.max_prefill_tokens} (split by runtime.decode.prefill)"
            )
        if graph == "decode" and self.graphable:
            return self._replay_decode(input_ids, attention_mask, state)
        with self.torch.cuda.stream(self.stream):
            ids = self.torch.from_numpy(np.ascontiguousarray(input_ids)).to(self.device, non_blocking=True)
            mask = self.torch.from_numpy(np.ascontiguousarray(attention_mask)).to(self.device, non_blocking=True)
            logits, presents = self._enqueue(graph, ids, mask, state)
            host = logits[:, -1].float().cpu()  # the only device-to-host copy of a step
        return host.numpy(), dict(zip(self.state_names, presents))

    def _enqueue(self, graph: str, ids, mask, state: dict, presents: list | None = None):
        """Bind inputs, and `presents` (else freshly allocated buffers) as the state outputs; run the
        engine on self.stream. Returns (logits, presents)."""
        torch = self.torch
        context, engine = self.contexts[graph], self.engines[graph]
        feeds = {"input_ids": ids, "attention_mask": mask, **state}
        for name, tensor in feeds.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, self._address(tensor))
        outputs = dict(zip(self.present_names, presents)) if presents is not None else {}
        for name in ["logits", *self.present_names]:
            if name not in outputs:
                shape = tuple(context.get_tensor_shape(name))
                outputs[name] = torch.empty(
                    shape, dtype=getattr(torch, from_tensorrt(engine.get_tensor_dtype(name)).name), device=self.device
                )
            context.set_tensor_address(name, self._address(outputs[name]))
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise TensorRTError(f"{graph} engine: enqueue failed ({self.logger.last_error() or 'no message'})")
        return outputs["logits"], [outputs[n] for n in self.present_names]

    def _address(self, tensor) -> int:
        # TensorRT wants a valid address even for an empty tensor (a K/V cache with past length 0)
        return tensor.data_ptr() if tensor.numel() else self._empty_buffer().data_ptr()

    def _empty_buffer(self):
        if not hasattr(self, "_empty"):
            self._empty = self.torch.empty(256, dtype=self.torch.uint8, device=self.device)
        return self._empty

    def _replay_decode(self, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict):
        """Decode step through CUDA graphs captured per batch size over two static state buffers: graph 0
        reads buffer 0 and writes buffer 1, graph 1 the reverse, so steps alternate without copying states.
        A state from elsewhere (the prefill) is copied into buffer 0 once."""
        torch = self.torch
        batch = input_ids.shape[0]
        if batch not in self._graphs:
            self._graphs[batch] = self._capture(batch)
        graphs, ids, mask, buffers, logits = self._graphs[batch]
        first = self.state_names[0]
        side = 1 if state[first].data_ptr() == buffers[1][0].data_ptr() else 0
        with torch.cuda.stream(self.stream):
            ids.copy_(torch.from_numpy(np.ascontiguousarray(input_ids)), non_blocking=True)
            # without attention layers only the new token's mask column is read: a static width of 1
            mask.copy_(torch.from_numpy(np.ascontiguousarray(attention_mask[:, -1:])), non_blocking=True)
            if state[first].data_ptr() != buffers[side][0].data_ptr():
                for name, buffer in zip(self.state_names, buffers[0]):
                    buffer.copy_(state[name])
            graphs[side].replay()
            host = logits[side][:, -1].float().cpu()
        return host.numpy(), dict(zip(self.state_names, buffers[1 - side]))

    def _capture(self, batch: int):
        torch = self.torch
        ids = torch.zeros(batch, 1, dtype=torch.int64, device=self.device)
        mask = torch.ones(batch, 1, dtype=torch.int64, device=self.device)
        buffers = [list(self.initial_state(batch).values()) for _ in range(2)]
        graphs, logits = [], []
        with torch.cuda.stream(self.stream):
            for side in (0, 1):
                inputs = dict(zip(self.state_names, buffers[side]))
                self._enqueue("decode", ids, mask, inputs, buffers[1 - side])  # warm-up outside capture
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    out, _ = self._enqueue("decode", ids, mask, inputs, buffers[1 - side])
                graphs.append(graph)
                logits.append(out)
        return graphs, ids, mask, buffers, logits
