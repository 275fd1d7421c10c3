"""Checkpoint tensors -> `weights.data`, one block at a time, never the whole model in memory.

An exported graph's initializers are first only *described* (`WeightSpec`: which model parameter,
which dtype, which layout changes), because the graph was traced with parameters on the `meta`
device. `WeightsFile` then produces each one from the checkpoint's memory map in blocks along its
first dimension (one expert of a stacked expert tensor, or a few MiB of rows), converts the dtype,
applies the layout and appends the bytes. Peak memory is a few blocks, whatever the model's size;
the file pages of the mapped checkpoint are reclaimable page cache, not process memory.

The layouts are listed in exporter/weight_spec.py.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nemotron_deploy.exporter import block_kernels
from nemotron_deploy.exporter.append_file import AppendFile
from nemotron_deploy.exporter.checkpoint import Checkpoint
from nemotron_deploy.exporter.safetensors_mmap import MappedFiles
from nemotron_deploy.exporter.weight_spec import WeightSpec, layout_shape

ALIGN = 64  # byte alignment of each tensor in weights.data (lets runtimes map it without copies)
_BLOCK_BYTES = 32 * 2**20  # rows converted at a time (a stacked expert tensor goes one expert at a time)
_IN_FLIGHT = 3  # blocks queued for writing behind the one being made (WeightsFile)
_SAMPLE_BYTES = 64 * 2**10  # a tensor's leading bytes in its fingerprint (WeightsFile)


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
                yield _converted(_apply(self.files.tensor(info)[None], layouts), dtype)
            return
        full = self.files.tensor(self.infos[0])
        if layouts and layouts[0][0] == "slice" and layouts[0][1][0] == 0:
            _, start, stop = layouts[0][1]  # a block of rows: only those are read
            full, layouts = full[start:stop], layouts[1:]
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
        # rows counted at the larger of a row read and a row made: a block stays within 32 MiB, which
        # glibc's heap reuses (a 64 MiB float32 block of a bfloat16 weight was a fresh mmap each time,
        # every page faulted in and zeroed anew: Nemotron-H-4B's weights phase 26 -> 21 s)
        row_bytes = full[0].numel() * max(full.element_size(), dtype.itemsize)
        rows = max(1, _BLOCK_BYTES // max(1, row_bytes)) if full.shape[0] else 1
        for start in range(0, full.shape[0], rows):
            yield _converted(_apply(full[start : start + rows], layouts), dtype)
        if full.shape[0] == 0:
            yield torch.empty(layout_shape(tuple(full.shape), layouts), dtype=dtype)


def _converted(block, dtype):
    """`block.to(dtype).contiguous()`, widened and transposed on onnxruntime's kernels where they apply
    (exporter/block_kernels.py: the same bytes, several times faster than torch's strided copy)."""
    fast = block_kernels.converted(block, dtype)
    return fast if fast is not None else block.to(dtype).contiguous()


def _apply(block, layouts: tuple[tuple, ...]):
    """Apply `layouts` to a block of rows (axis 0 = experts or rows, unchanged by every layout here)."""
    for kind, arg in layouts:
        if kind == "transpose":
            if arg[0] != 0:
                raise ValueError(f"layout transpose{arg} on a stacked tensor moves the expert axis")
            block = block.permute(arg)
        elif kind == "repeat_rows":
            block = block.repeat_interleave(arg, dim=1)
        elif kind == "slice":
            axis, start, stop = arg
            if axis == 0:
                raise ValueError(f"layout slice{arg} cuts the axis the blocks are made along")
            block = block.narrow(axis, start, stop - start)
        elif kind == "quantize":
            from nemotron_deploy.exporter.quantize import quantize_rows

            bits, size, part = arg
            block = quantize_rows(block, bits, size)[0 if part == "weights" else 1]
    return block


class WeightsFile:
    """Appends tensors to one data file, each distinct content once, 64-byte aligned.

    `add(spec)` streams a spec from the checkpoint and returns (offset, length) in the file. A spec
    seen before is not read again; a new spec whose bytes equal earlier ones (e.g. tied embeddings,
    identical norms) points at the earlier copy and writes nothing.

    The file is read and written once, as a pipeline that never drains between tensors: the calling
    thread makes blocks (reads the checkpoint's map, converts, lays out) while one worker thread writes
    the blocks made before, in order, and another hashes them (both release the GIL), so the whole file's
    SHA-256 (`sha256`, after `close`) needs no second read and the disk is never left waiting for the
    next tensor. At most `_IN_FLIGHT` blocks are queued behind the one being made.

    Equal content is found without hashing every tensor: a tensor's fingerprint is the SHA-256 of its
    first `_SAMPLE_BYTES`, known before any of its bytes are written. A fingerprint seen before is
    confirmed (or not) byte for byte, so a distinct tensor is never merged: a tensor no longer than the
    sample against the earlier one's bytes kept in memory; a longer one by streaming it again against the
    file (after the queued writes land), which only tensors sharing their leading bytes pay.
    """

    def __init__(self, path: Path, ckpt: Checkpoint):
        self.path = path
        self.ckpt = ckpt
        self.files = MappedFiles()
        self.sink = AppendFile(path)  # O_DIRECT where the filesystem has it (exporter/append_file.py)
        self.by_spec: dict[WeightSpec, tuple[int, int]] = {}
        self.by_fingerprint: dict[bytes, list[tuple[int, int]]] = {}
        self.small: dict[int, bytes] = {}  # offset -> bytes of each stored tensor no longer than the sample
        self.written = 0  # bytes streamed (before de-duplication), for progress
        self._end = 0  # bytes in the file once the queued writes land
        self._digest = hashlib.sha256()  # of the bytes queued so far (updated by the hashing worker)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights-write")  # one thread: in order
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights-hash")
        self._queued: deque = deque()  # (write job, hash job) per block, oldest first
        self._kept: tuple[WeightSpec, list] | None = None  # a quantized weight's other part (_quantized_blocks)
        self.sha256: str | None = None  # the file's hex SHA-256, once closed
        # seconds spent: making blocks (read, convert, lay out), waiting for the queue, writing, hashing
        self.seconds = dict.fromkeys(("make", "wait", "write", "hash"), 0.0)

    def has(self, spec: WeightSpec) -> bool:
        return spec in self.by_spec

    def add(self, spec: WeightSpec) -> tuple[int, int]:
        if spec in self.by_spec:
            return self.by_spec[spec]
        blocks = self._timed_blocks(spec)
        head, sample = [], b""
        for data in blocks:  # the blocks holding the sample: the fingerprint before any byte is written
            head.append(data)
            sample += data[: max(0, _SAMPLE_BYTES - len(sample))]
            if len(sample) >= _SAMPLE_BYTES:
                break
        whole = len(sample) < _SAMPLE_BYTES  # the tensor ended within the sample: `sample` is all of it
        fingerprint = hashlib.sha256(sample).digest()
        for earlier in self.by_fingerprint.get(fingerprint, ()):
            if self._equals(earlier, sample, whole, spec):
                self.by_spec[spec] = earlier
                return earlier
        self._queue(b"\0" * (-self._end % ALIGN))
        start = self._end
        for data in itertools.chain(head, blocks):
            self._queue(data)
        stored = self.by_spec[spec] = (start, self._end - start)
        self.by_fingerprint.setdefault(fingerprint, []).append(stored)
        if whole:
            self.small[start] = sample
        return stored

    def _equals(self, earlier: tuple[int, int], sample: bytes, whole: bool, spec: WeightSpec) -> bool:
        """Whether `spec`, whose fingerprint is the stored `earlier` (offset, length)'s, has its bytes."""
        if whole:
            return self.small.get(earlier[0]) == sample
        return earlier[1] >= len(sample) and self._file_equals(earlier, spec)

    def _timed_blocks(self, spec: WeightSpec) -> Iterator[memoryview]:
        """`_blocks(spec)` as raw bytes, the time to make each counted."""
        clock = time.perf_counter()
        for block in self._blocks(spec):
            data = _bytes(block)
            self.seconds["make"] += time.perf_counter() - clock
            yield data
            clock = time.perf_counter()

    def _queue(self, data) -> None:
        """Queue `data` to be written and hashed after everything queued before. Waits while
        `_IN_FLIGHT` blocks are queued (peak memory: that many blocks and the one being made)."""
        if not len(data):
            return
        while len(self._queued) >= _IN_FLIGHT:
            self._wait_oldest()
        self._queued.append(
            (
                self._writer.submit(self._timed, "write", self.sink.write, data),
                self._hasher.submit(self._timed, "hash", self._digest.update, data),
            )
        )
        self._end += len(data)
        self.written += len(data)

    def _wait_oldest(self) -> None:
        clock = time.perf_counter()
        for job in self._queued.popleft():
            job.result()  # a failed write (disk full) raises here, in the exporting thread
        self.seconds["wait"] += time.perf_counter() - clock

    def _drain(self) -> None:
        while self._queued:
            self._wait_oldest()

    def _timed(self, what: str, fn, data) -> None:
        clock = time.perf_counter()
        fn(data)
        self.seconds[what] += time.perf_counter() - clock  # one thread per kind: no race

    def _file_equals(self, stored: tuple[int, int], spec: WeightSpec) -> bool:
        """Whether `spec`'s bytes, streamed again, equal the file's `stored` (offset, length) range."""
        self._drain()
        self.sink.make_readable()
        (offset, length), done = stored, 0
        with open(self.path, "rb", buffering=0) as file:
            for data in self._timed_blocks(spec):
                if done + len(data) > length or os.pread(file.fileno(), len(data), offset + done) != data:
                    return False
                done += len(data)
        return done == length

    def materialize(self, spec: WeightSpec):
        """The whole tensor in memory (for the few small initializers kept inside the .onnx)."""
        import torch

        blocks = list(self._blocks(spec))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def _blocks(self, spec: WeightSpec) -> Iterator:
        import torch

        if spec.layouts and spec.layouts[-1][0] == "quantize":
            return self._quantized_blocks(spec)
        return WeightSource(self.ckpt, self.files, spec.param).blocks(getattr(torch, spec.dtype), spec.layouts)

    def _quantized_blocks(self, spec: WeightSpec) -> Iterator:
        """One part of a quantized weight (packed integers or scales). Quantizing makes both: the other
        part's blocks are kept for its spec, which comes next (the graph pass registers the two together),
        unless they would hold more than `_BLOCK_BYTES`."""
        import torch

        from nemotron_deploy.exporter.quantize import quantize_rows

        if self._kept is not None and self._kept[0] == spec:
            blocks, self._kept = self._kept[1], None
            yield from blocks
            return
        self._kept = None
        bits, size, part = spec.layouts[-1][1]
        other = "scales" if part == "weights" else "weights"
        sibling = WeightSpec(
            spec.param, "float32" if other == "scales" else "uint8", (*spec.layouts[:-1], ("quantize", (bits, size, other)))
        )
        kept, kept_bytes = [], 0
        for block in WeightSource(self.ckpt, self.files, spec.param).blocks(torch.float32, spec.layouts[:-1]):
            packed, scales = quantize_rows(block, bits, size)
            mine, theirs = (packed, scales) if part == "weights" else (scales, packed)
            kept_bytes += theirs.numel() * theirs.element_size()
            if kept is not None and kept_bytes <= _BLOCK_BYTES:
                kept.append(theirs)
            else:
                kept = None
            yield mine.to(getattr(torch, spec.dtype))
        if kept is not None:
            self._kept = (sibling, kept)

    def close(self) -> None:
        """Wait for the queued writes and close the file (also after a failed `add`: nothing left writing)."""
        try:
            self._drain()
        finally:
            self._writer.shutdown()
            self._hasher.shutdown()
            self.sink.close()
        self.sha256 = self._digest.hexdigest()


def _bytes(block) -> memoryview:
    """Raw little-endian bytes of a contiguous CPU tensor, without a copy (bfloat16 included)."""
    import torch

    flat = block.reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
