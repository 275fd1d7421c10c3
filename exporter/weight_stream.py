"""Checkpoint tensors -> `weights.data`, one block at a time, never the whole model in memory.

An exported graph's initializers are first only *described* (`WeightSpec`: which model parameter,
which dtype, which layout changes), because the graph was traced with parameters on the `meta`
device. `WeightsFile` then produces each one from the checkpoint's memory map in blocks along its
first dimension (one expert of a stacked expert tensor, or a few MiB of rows), converts the dtype,
applies the layout and appends the bytes. Peak memory is a few blocks, whatever the model's size;
the file pages of the mapped checkpoint are reclaimable page cache, not process memory.

Layouts (applied in order, each on a block of rows):
    ("transpose", perm)   a permutation of the axes (torch.permute semantics)
    ("repeat_rows", r)    every row of axis 1 repeated r times, interleaved (torch.repeat_interleave)
    ("quantize", (bits, block, part))
                          block-wise integers along the last axis (exporter/quantize.py); `part` is
                          "weights" (packed uint8) or "scales" (float32): one stored tensor each
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.exporter.checkpoint import Checkpoint
from nemotron_deploy.exporter.safetensors_mmap import MappedFiles

ALIGN = 64  # byte alignment of each tensor in weights.data (lets runtimes map it without copies)
_BLOCK_BYTES = 64 * 2**20  # rows converted at a time (a stacked expert tensor goes one expert at a time)


@dataclass(frozen=True)
class WeightSpec:
    """One initializer, described: model parameter `param` in `dtype` (torch name) after `layouts`."""

    param: str
    dtype: str
    layouts: tuple[tuple, ...] = ()

    def with_layout(self, *layout) -> "WeightSpec":
        return WeightSpec(self.param, self.dtype, (*self.layouts, tuple(layout)))

    def with_dtype(self, dtype: str) -> "WeightSpec":
        return WeightSpec(self.param, dtype, self.layouts)  # a cast commutes with every layout here

    def to_json(self) -> dict:
        return {"param": self.param, "dtype": self.dtype, "layouts": [list(layout) for layout in self.layouts]}

    @classmethod
    def from_json(cls, raw: dict) -> "WeightSpec":
        return cls(raw["param"], raw["dtype"], tuple((kind, tuple(arg) if isinstance(arg, list) else arg) for kind, arg in raw["layouts"]))


def layout_shape(shape: tuple[int, ...], layouts: tuple[tuple, ...]) -> tuple[int, ...]:
    for kind, arg in layouts:
        if kind == "transpose":
            shape = tuple(shape[i] for i in arg)
        elif kind == "repeat_rows":
            shape = (shape[0], shape[1] * arg, *shape[2:])
        elif kind == "quantize":
            bits, block, part = arg
            shape = (*shape[:-1], shape[-1] // block, *((block * bits // 8,) if part == "weights" else ()))
        else:
            raise ValueError(f"unknown weight layout {kind!r}")
    return shape


class WeightSource:
    """A model parameter's tensor in the checkpoint: one tensor, or one per expert stacked on axis 0."""

    def __init__(self, ckpt: Checkpoint, files: MappedFiles, param: str):
        parts = ckpt.sources[param]
        self.files = files
        self.infos = [parts[None]] if None in parts else [parts[j] for j in range(len(parts))]
        self.stacked = None not in parts

    def blocks(self, dtype, layouts: tuple[tuple, ...]) -> Iterator:
        """The parameter after `layouts`, converted to `dtype`, as contiguous blocks along axis 0."""
        import torch

        if self.stacked:
            for info in self.infos:  # one expert at a time: layouts must keep the expert axis first
                yield _apply(self.files.tensor(info)[None], layouts).to(dtype).contiguous()
            return
        full = self.files.tensor(self.infos[0])
        if not layouts and full.dim() == 0:
            yield full.to(dtype)
            return
        perm = next((arg for kind, arg in layouts if kind == "transpose"), None)
        if perm is not None and perm[0] != 0:
            # A transpose that moves axis 0 (a Linear weight (out, in) stored (in, out)): the permuted
            # view is free, and its row blocks are gathered from the map block by block.
            if layouts[0][0] != "transpose" or len(layouts) > 1:
                raise ValueError(f"unsupported layout chain {layouts}")
            full, layouts = full.permute(perm), ()
        rows = max(1, _BLOCK_BYTES // max(1, full[0].numel() * full.element_size())) if full.shape[0] else 1
        for start in range(0, full.shape[0], rows):
            yield _apply(full[start : start + rows], layouts).to(dtype).contiguous()
        if full.shape[0] == 0:
            yield torch.empty(layout_shape(tuple(full.shape), layouts), dtype=dtype)


def _apply(block, layouts: tuple[tuple, ...]):
    """Apply `layouts` to a block of rows (axis 0 = experts or rows, unchanged by every layout here)."""
    for kind, arg in layouts:
        if kind == "transpose":
            if arg[0] != 0:
                raise ValueError(f"layout transpose{arg} on a stacked tensor moves the expert axis")
            block = block.permute(arg)
        elif kind == "repeat_rows":
            block = block.repeat_interleave(arg, dim=1)
        elif kind == "quantize":
            from nemotron_deploy.exporter.quantize import quantize_rows

            bits, size, part = arg
            block = quantize_rows(block, bits, size)[0 if part == "weights" else 1]
    return block


class WeightsFile:
    """Appends tensors to one data file, each distinct content once, 64-byte aligned.

    `add(spec)` streams a spec from the checkpoint and returns (offset, length) in the file. A spec
    seen before is not read again; a new spec whose bytes equal earlier ones (e.g. tied embeddings,
    identical norms) is written, hashed, and rolled back to point at the earlier copy. The whole file's
    SHA-256 is computed as it is written (`sha256`, after `close`), so the manifest needs no second read
    of it: each tensor's bytes go into a copy of the file's digest, which replaces it only if the tensor
    stays (a rolled-back one leaves the digest as it was).
    """

    def __init__(self, path: Path, ckpt: Checkpoint):
        self.path = path
        self.ckpt = ckpt
        self.files = MappedFiles()
        self.file = open(path, "wb")
        self.by_spec: dict[WeightSpec, tuple[int, int]] = {}
        self.by_content: dict[bytes, tuple[int, int]] = {}
        self.written = 0  # bytes streamed (before de-duplication), for progress
        self._file_digest = hashlib.sha256()  # of the bytes in the file so far
        self.sha256: str | None = None  # the file's hex SHA-256, once closed

    def has(self, spec: WeightSpec) -> bool:
        return spec in self.by_spec

    def add(self, spec: WeightSpec) -> tuple[int, int]:
        if spec in self.by_spec:
            return self.by_spec[spec]
        start = self.file.seek(0, os.SEEK_END)
        padding = b"\0" * (-start % ALIGN)
        start += self.file.write(padding)
        self._file_digest.update(padding)  # stays even if the tensor is rolled back
        digest, file_digest = hashlib.sha256(), self._file_digest.copy()
        for block in self._blocks(spec):
            data = _bytes(block)
            digest.update(data)
            file_digest.update(data)
            self.file.write(data)
            self.written += len(data)
        length = self.file.tell() - start
        key = digest.digest()
        if key in self.by_content:  # same bytes as an earlier tensor: keep one copy
            self.file.truncate(start)
            self.file.seek(start)
        else:
            self.by_content[key] = (start, length)
            self._file_digest = file_digest
        self.by_spec[spec] = self.by_content[key]
        return self.by_spec[spec]

    def materialize(self, spec: WeightSpec):
        """The whole tensor in memory (for the few small initializers kept inside the .onnx)."""
        import torch

        blocks = list(self._blocks(spec))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def _blocks(self, spec: WeightSpec) -> Iterator:
        import torch

        return WeightSource(self.ckpt, self.files, spec.param).blocks(getattr(torch, spec.dtype), spec.layouts)

    def close(self) -> None:
        self.file.close()
        self.sha256 = self._file_digest.hexdigest()


def _bytes(block) -> memoryview:
    """Raw little-endian bytes of a contiguous CPU tensor, without a copy (bfloat16 included)."""
    import torch

    flat = block.reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
