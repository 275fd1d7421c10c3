"""ReadAhead: the checkpoint's tensors read into the page cache in the order given, within the budget."""

import ctypes
import mmap
import os
from types import SimpleNamespace

import numpy as np

from nemotron_deploy.exporter.read_ahead import ReadAhead
from nemotron_deploy.exporter.safetensors_mmap import TensorInfo

MiB = 2**20


def _cached_share(path, begin: int, end: int) -> float:
    """Share of the file's pages in [begin, end) that are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size, fd = os.path.getsize(path), os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        vector = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
        assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) == 0
        libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))
    finally:
        os.close(fd)
    return float((np.frombuffer(bytes(vector), dtype=np.uint8)[begin // mmap.PAGESIZE : end // mmap.PAGESIZE] & 1).mean())


GAP = 24 * MiB  # between tensors: more than the kernel reads ahead of a read (read_ahead_kb, 8 MiB here)


def _checkpoint(tmp_path, sizes: dict):
    """A file holding one tensor per name (uint8, `sizes` bytes each, in order, `GAP` apart), out of the
    page cache."""
    path, infos, offset = tmp_path / "model.safetensors", {}, 0
    with open(path, "wb") as f:
        for name, size in sizes.items():
            f.write(os.urandom(size) + bytes(GAP))
            infos[name] = {None: TensorInfo(name, path, "U8", (size,), offset, offset + size)}
            offset += size + GAP
        f.flush()
        os.fsync(f.fileno())  # clean pages: the kernel drops them on request
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    return path, SimpleNamespace(sources=infos)


def test_tensors_are_read_in_the_given_order_within_the_budget(tmp_path):
    path, ckpt = _checkpoint(tmp_path, {"a": 4 * MiB, "b": 4 * MiB, "c": 4 * MiB})
    tensors = {name: (info[None].begin, info[None].end) for name, info in ckpt.sources.items()}
    assert all(_cached_share(path, *tensors[n]) < 0.5 for n in tensors), "the file stayed in the page cache"
    ahead = ReadAhead(ckpt, ["c", "a", "b", "c"], budget=8 * MiB)  # c first; b is past the budget
    ahead.wait()
    assert ahead.read == 8 * MiB
    assert _cached_share(path, *tensors["c"]) == 1.0 and _cached_share(path, *tensors["a"]) == 1.0
    assert _cached_share(path, *tensors["b"]) < 0.5


def test_stop_ends_the_reading(tmp_path):
    path, ckpt = _checkpoint(tmp_path, {"a": 4 * MiB})
    ahead = ReadAhead(ckpt, ["a"], budget=0)
    ahead.stop()
    assert ahead.read == 0
    ahead = ReadAhead(ckpt, ["missing", "a"], budget=None)  # a name without bytes in the checkpoint is skipped
    ahead.wait()
    assert ahead.read == 4 * MiB
