"""Zero-copy, memory-mapped reading of `.safetensors` files (single file or sharded with an index).

Each tensor is a view of a private (copy-on-write) memory map, so opening a 60 GB checkpoint costs
only its headers, and a tensor's pages are read from disk when first touched and can be evicted again
(recent `safetensors.torch.load_file` maps files too; see benchmarks/results/load_memory.md). We read
the small, fixed format (8-byte little-endian header length, JSON header, raw data) ourselves so that
every header entry is checked against the file size up front and each inconsistency is reported as
one line naming the file and tensor, and so that `inspect` validates a checkpoint from headers alone.
Only JSON and raw bytes are ever parsed: no pickle.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.runtime.artifact.dtypes import dtype_bytes
from nemotron_deploy.runtime.artifact.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tag -> dtype name (runtime/artifact/dtypes.py)
DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype tag, shape and byte range within the data section."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def torch_dtype_name(self) -> str:
        return DTYPES[self.dtype]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check one file's header against its size; raises CheckpointError naming the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8 or header_len > 100 * 2**20:
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {header_len} bytes in a {size}-byte file)")
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        infos[name] = _tensor_info(path, name, entry, data_start, size)
    return infos


def _tensor_info(path: Path, name: str, entry: dict, data_start: int, size: int) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: corrupt header entry for tensor '{name}'") from None
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor '{name}' has dtype {dtype}, expected one of {sorted(DTYPES)}")
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * dtype_bytes(DTYPES[dtype]) or begin < 0:
        raise CheckpointError(f"{path}: tensor '{name}' byte range {begin}..{end} does not fit shape {list(shape)} {dtype}")
    if data_start + end > size:
        raise CheckpointError(f"{path}: truncated file: tensor '{name}' ends at byte {data_start + end}, file has {size} bytes")
    return TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end)


def list_tensors(checkpoint_dir: Path) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint directory: sharded (index.json) or all `*.safetensors` files."""
    checkpoint_dir = Path(checkpoint_dir)
    index = checkpoint_dir / INDEX_FILE
    if index.is_file():
        files = _files_from_index(index)
    else:
        files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{checkpoint_dir}: no *.safetensors weights found (pickle .bin checkpoints are not read)")
    tensors: dict[str, TensorInfo] = {}
    for path in files:
        for name, info in read_header(path).items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor '{name}' also stored in {tensors[name].file.name}")
            tensors[name] = info
    return tensors


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{index}: expected a JSON object with a 'weight_map' of tensor -> file") from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index}: lists shard {missing[0]} which does not exist")
    return [index.parent / n for n in names]


class MappedFiles:
    """Keeps one copy-on-write memory map per file alive, and hands out tensor views of it."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}

    def tensor(self, info: TensorInfo):
        """A torch tensor viewing `info`'s bytes (no copy). Shape `info.shape`, dtype from the file."""
        import torch

        mm = self._maps.get(info.file)
        if mm is None:
            with open(info.file, "rb") as f:
                # ACCESS_COPY: writable private pages, so torch can wrap it, and the file is never modified.
                mm = self._maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        dtype = getattr(torch, info.torch_dtype_name)
        numel = (info.end - info.begin) // dtype_bytes(DTYPES[info.dtype])
        if numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        return torch.frombuffer(mm, dtype=dtype, count=numel, offset=info.begin).view(info.shape)
