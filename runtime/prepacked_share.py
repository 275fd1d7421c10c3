"""One copy of every byte a pre-packed cache entry shares with its artifact (runtime/onnx_prepacked.py).

onnxruntime saves an optimized graph with all of its initializers in the entry's data file, and each
packed weight right after its original. Only those pairs must stay there: onnxruntime re-packs each
original at load and checks it against its blob, and looks for a blob in its tensor's file. Every other
initializer it stored (the quantized weights' scales, the embedding table, norms: ~0.25x of an int4
artifact's weights.data) is byte for byte a tensor of the artifact's weights.data, unchanged by the
optimizer. So the entry gets `weights.data` as a hard link to the artifact's file (no bytes on disk, and
the same page cache: one copy in memory too), those tensors point into it at the artifact's offsets,
and the data file is compacted in place to what is left (each tensor and blob keeping its alignment). Matched by content, not by name: an optimizer-made constant can carry an artifact
tensor's name and other bytes.

Where a hard link cannot be made (the cache on another filesystem, a filesystem without them) the entry
stays as onnxruntime wrote it; a symbolic link would not do: onnxruntime resolves it and refuses a data
file outside the model's folder.

    share_with_artifact(entry_dir, artifact_graph, artifact_weights) -> bytes no longer stored
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SHARED_FILE = "weights.data"  # the hard link's name inside the entry
_ALIGN = 4096
_COPY_CHUNK = 16 * 2**20


def share_with_artifact(
    entry: Path, artifact_graph: Path, artifact_weights: Path, model_file: str = "model.onnx", data_file: str = "model.data"
) -> int:
    """Rewrite the entry in `entry` (model_file + data_file, as onnxruntime saved them) so that every
    initializer without a packed blob whose bytes equal a tensor of `artifact_weights` is read from a hard
    link of that file. Returns the bytes saved (0 when nothing matched or no hard link can be made)."""
    import onnx

    model = onnx.load(str(entry / model_file), load_external_data=False)
    data = entry / data_file
    originals = _OriginalIndex(onnx.load(str(artifact_graph), load_external_data=False).graph, artifact_weights)
    with open(data, "rb") as f:
        shared = {}
        for tensor in model.graph.initializer:
            info = _external(tensor)
            if info is None or info.get("location") != data_file or _blobs(tensor):
                continue
            f.seek(info["offset"])
            found = originals.find(f.read(info["length"]))
            if found is not None:
                shared[tensor.name] = found
    if not shared or not _hard_link(artifact_weights, entry / SHARED_FILE):
        return 0
    before = data.stat().st_size
    _rewrite(model, data, shared)
    (entry / model_file).write_bytes(model.SerializeToString())
    return before - data.stat().st_size


class _OriginalIndex:
    """The artifact's external tensors by content: find(bytes) -> their offset in weights.data, or None."""

    def __init__(self, graph, weights: Path):
        self.weights = weights
        self.by_length: dict[int, list[int]] = {}
        self.digests: dict[int, str] = {}  # offset -> sha256, computed when a same-length candidate asks
        for tensor in graph.initializer:
            info = _external(tensor)
            if info is not None and info["location"] == weights.name:
                self.by_length.setdefault(info["length"], []).append(info["offset"])

    def find(self, raw: bytes) -> int | None:
        offsets = self.by_length.get(len(raw), [])
        if not offsets:
            return None
        digest = hashlib.sha256(raw).hexdigest()
        with open(self.weights, "rb") as f:
            for offset in offsets:
                if offset not in self.digests:
                    f.seek(offset)
                    self.digests[offset] = hashlib.sha256(f.read(len(raw))).hexdigest()
                if self.digests[offset] == digest:
                    return offset
        return None


def _external(tensor) -> dict | None:
    """A tensor's external data place: {"location", "offset", "length"} (None if stored in the model)."""
    info = {e.key: e.value for e in tensor.external_data}
    if "length" not in info:
        return None
    return {"location": info.get("location"), "offset": int(info.get("offset", 0)), "length": int(info["length"])}


def _blobs(tensor) -> list:
    """The tensor's packed-blob entries (keys `prepacked_<i>`, values "<kernel>+<hash>|off;len;align|...")."""
    return [e for e in tensor.external_data if e.key.startswith("prepacked")]


def _hard_link(source: Path, link: Path) -> bool:
    try:
        link.unlink(missing_ok=True)
        os.link(source, link)
        return True
    except OSError:
        return False


def _rewrite(model, data: Path, shared: dict[str, int]) -> None:
    """Point `shared` tensors at SHARED_FILE and compact the rest of `data` in place: every kept tensor
    and blob moves towards the start, in file order (so a move never overwrites what is still to move),
    keeping its alignment (onnxruntime's 4 KiB, or whatever power of two its offset had)."""
    moves = []  # (old offset, length, where the new offset is written)
    for tensor in model.graph.initializer:
        info = _external(tensor)
        if info is None or info["location"] != data.name:
            continue
        if tensor.name in shared:
            _set(tensor, "location", SHARED_FILE)
            _set(tensor, "offset", str(shared[tensor.name]))
            continue
        moves.append((info["offset"], info["length"], _TensorOffset(tensor)))
        for entry in _blobs(tensor):
            for i, blob in enumerate(entry.value.split("|")[1:]):
                offset, length = (int(v) for v in blob.split(";")[:2])
                moves.append((offset, length, _BlobOffset(entry, i + 1)))
    end, moved = 0, {}
    with open(data, "r+b") as f:
        for offset, length, place in sorted(moves, key=lambda m: m[0]):
            if (offset, length) not in moved:  # bytes two entries point at move once
                align = min(_ALIGN, offset & -offset) if offset else _ALIGN
                at = -(-end // align) * align  # <= offset: end <= offset and offset is a multiple of align
                _move(f, offset, at, length)
                moved[offset, length], end = at, at + length
            place.set(moved[offset, length])
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())


class _TensorOffset:
    def __init__(self, tensor):
        self.tensor = tensor

    def set(self, offset: int) -> None:
        _set(self.tensor, "offset", str(offset))


class _BlobOffset:
    """The i-th "|"-separated part ("off;len;align") of a `prepacked_<k>` entry's value."""

    def __init__(self, entry, i: int):
        self.entry, self.i = entry, i

    def set(self, offset: int) -> None:
        parts = self.entry.value.split("|")
        fields = parts[self.i].split(";")
        parts[self.i] = ";".join([str(offset), *fields[1:]])
        self.entry.value = "|".join(parts)


def _move(f, src: int, dst: int, length: int) -> None:
    """Copy bytes [src, src+length) to dst <= src, front to back (safe when the ranges overlap)."""
    if src == dst:
        return
    done = 0
    while done < length:
        f.seek(src + done)
        chunk = f.read(min(length - done, _COPY_CHUNK))
        if not chunk:
            raise OSError(f"{f.name}: ends before byte {src + length}")
        f.seek(dst + done)
        f.write(chunk)
        done += len(chunk)


def _set(tensor, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)
