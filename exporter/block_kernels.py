"""Weight blocks widened to float32 and transposed on onnxruntime's CPU kernels, where torch is slow.

Exporting a bfloat16 checkpoint to float32 widens every weight, and most of them are Linear weights
stored (out, in) that the graph reads (in, out): each block of rows is a transpose and a cast. torch
does the pair as one strided copy at ~0.7 GB/s of output on one core, and even a contiguous bfloat16
-> float32 `.to` at 2-3 GB/s; onnxruntime's Transpose (cache-blocked) then Cast run the same block at
~3.7 GB/s, its Cast alone at ~14 GB/s (one core, a 12288 x 3072 weight in 32 MiB blocks, measured
2026-12-07). On a 2-core machine the export's hashing thread needs the other core, so this is what
makes the weights phase disk-bound (benchmarks/results/export_block_kernels_cpu.md).

Optional: onnxruntime is not a dependency of the exporter. `converted` returns None wherever these
kernels do not apply (onnxruntime not installed, a narrowing cast, a layout other than a 2-D
transpose), and the caller converts with torch, which gives the same bytes: the casts here only widen
(exact) and a transpose only moves bytes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# torch dtype -> (ONNX TensorProto element type, numpy dtype whose bytes carry it)
_ONNX = {torch.bfloat16: (16, np.uint16), torch.float16: (10, np.float16), torch.float32: (1, np.float32)}
_WIDENS = {(torch.bfloat16, torch.float32), (torch.float16, torch.float32)}


def converted(block: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """`block.to(dtype).contiguous()` on onnxruntime's kernels, or None where they do not apply.

    block: a contiguous tensor (widened by Cast), or a 2-D transposed view, strides (1, n) (transposed
    by Transpose, then widened if its dtype is not `dtype`), or such a view with a leading axis of 1
    (one expert of a stacked tensor). dtype: float32, or `block`'s own dtype for a transpose.
    """
    pair = (block.dtype, dtype)
    if pair not in _WIDENS and not (block.dtype == dtype and block.dtype in _ONNX):
        return None
    if block.dim() == 3 and block.shape[0] == 1 and not block.is_contiguous():
        inner = converted(block[0], dtype)
        return None if inner is None else inner[None]
    if block.is_contiguous():
        return None if block.dtype == dtype else _run(block, dtype, transpose=False)
    if block.dim() == 2 and block.stride(0) == 1:
        return _run(block.t().contiguous(), dtype, transpose=True)  # rows of the stored layout: a plain copy
    return None


def _run(source: torch.Tensor, dtype: torch.dtype, transpose: bool) -> torch.Tensor | None:
    """`source` (contiguous) cast to `dtype`, transposed first if `transpose`, written straight into a
    new torch tensor (IO binding: no copy of the output)."""
    session = _session(source.dtype, dtype, transpose)
    if session is None:
        return None
    import onnxruntime as ort

    shape = tuple(reversed(source.shape)) if transpose else tuple(source.shape)
    out = torch.empty(shape, dtype=dtype)
    if out.numel() == 0:
        return out
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", _ort_value(ort, source))
    binding.bind_ortvalue_output("y", _ort_value(ort, out))  # onnxruntime writes into `out`'s memory
    session.run_with_iobinding(binding)
    return out


def _ort_value(ort, tensor: torch.Tensor):
    """An OrtValue over a contiguous CPU tensor's memory (no copy); bfloat16 travels as uint16 words."""
    onnx_type, carrier = _ONNX[tensor.dtype]
    words = tensor.view(torch.uint16) if tensor.dtype == torch.bfloat16 else tensor
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(words.numpy().view(carrier), onnx_type)


@functools.lru_cache(maxsize=None)
def _session(source: torch.dtype, dtype: torch.dtype, transpose: bool):
    """A one-thread onnxruntime session of [Transpose] [Cast] for one dtype pair, or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import helper
    except ImportError:
        return None
    nodes = []
    if transpose:  # before the cast: the 2-byte words move, half the bytes
        nodes.append(helper.make_node("Transpose", ["x"], ["t" if source != dtype else "y"], perm=[1, 0]))
    if source != dtype:
        nodes.append(helper.make_node("Cast", ["t" if transpose else "x"], ["y"], to=_ONNX[dtype][0]))
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", _ONNX[source][0], None)],
        [helper.make_tensor_value_info("y", _ONNX[dtype][0], None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # the export's hashing thread has the other core
    options.enable_cpu_mem_arena = False  # the intermediate is freed after each block, not kept by an arena
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
