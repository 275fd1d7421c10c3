"""Which pages of a mapped weights file stay resident (Linux; elsewhere these are no-ops).

Two things count in a process's resident memory that no step needs, and both are file pages the
process can give back (and a third, heap memory freed after session creation: `trim_heap`):
- pages that session creation read once: onnxruntime reads a quantized weight's scales to pack
  them into the weight's packed copy, and keeps the scales mapped although its kernels never read
  them again (measured: 75 MiB of the int4 benchmark artifact). `drop` unmaps their pages
  (MADV_DONTNEED; a page read again later is simply read again from the file);
- read-ahead around a table read one row at a time: looking up 160 token rows of a 125 MiB embedding
  made 119 MiB of it resident (the kernel reads around each faulting page, up to read_ahead_kb).
  `random_access` marks such ranges MADV_RANDOM: only the rows read become resident.

`dropping` runs `drop` every few milliseconds while a block runs: onnxruntime releases Python's lock
while it creates a session, and its re-reading of each stored original (to re-pack it and compare with
the cached blob) would otherwise stay resident until the end (measured on the int4 benchmark artifact:
peak RSS of the open 654 -> 548 MiB, open time unchanged).

All act on every mapping of the file in this process (ours, and those onnxruntime made itself, found
in /proc/self/smaps), and only on private mappings that hold no copy-on-write copy of a page: every
resident page is then the file's own, and dropping it cannot lose data. (onnxruntime maps its
initializers read-write and never writes them.)
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

_MADV_RANDOM = getattr(mmap, "MADV_RANDOM", 1)
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux 5.4+; older kernels refuse it (then: no effect)
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \d+\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    start: int  # virtual address
    end: int
    offset: int  # file offset of `start`
    writable: bool
    private_copies_kb: int  # "Anonymous" pages: copy-on-write copies of file pages

    def addresses(self, first: int, last: int) -> tuple[int, int] | None:
        """The page-aligned address range of file bytes [first, last) inside this mapping, or None."""
        lo, hi = max(first, self.offset), min(last, self.offset + self.end - self.start)
        page = mmap.PAGESIZE
        lo, hi = -(-lo // page) * page, hi // page * page  # whole pages only: never a neighbour's
        return (self.start + lo - self.offset, self.start + hi - self.offset) if hi > lo else None


def mappings(path: Path) -> list[Mapping]:
    """This process's mappings of `path`."""
    target = str(Path(path).resolve())
    found, current = [], None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                header = _HEADER.match(line)
                if header:
                    start, end, perms, offset, name = header.groups()
                    current = None
                    if name.strip() == target:
                        current = [int(start, 16), int(end, 16), int(offset, 16), "w" in perms, 0]
                        found.append(current)
                elif current is not None and line.startswith("Anonymous:"):
                    current[4] = int(line.split()[1])
    except OSError:
        return []
    return [Mapping(*m) for m in found]


def drop(path: Path, keep: list[tuple[int, int]], advice: int = _MADV_DONTNEED) -> None:
    """Give back the resident pages of `path`'s mappings outside the file ranges `keep` (start, end)."""
    for m in _safe(path):
        for first, last in _gaps(keep, m.offset, m.offset + m.end - m.start):
            _advise(m.addresses(first, last), advice)


@contextlib.contextmanager
def dropping(keep: dict[Path, list[tuple[int, int]]], interval_s: float = 0.02):
    """`drop(path, ranges)` for each file of `keep` every `interval_s` while the block runs (in a thread),
    and once after it.

    While the block runs, its code may unmap the file and reuse the addresses (onnxruntime unmaps each
    original once packed, and its allocator maps new memory): a mapping read from /proc a moment ago may
    be heap memory now, which MADV_DONTNEED would zero. So the thread asks for MADV_PAGEOUT, which never
    loses data (an anonymous page without swap stays; a clean file page is read again when touched), and
    the final drop, with nothing running beside it, for MADV_DONTNEED."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            for path, ranges in keep.items():
                drop(path, ranges, _MADV_PAGEOUT)

    thread = threading.Thread(target=run, name="resident.dropping", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for path, ranges in keep.items():
            drop(path, ranges)


def random_access(path: Path, ranges: list[tuple[int, int]]) -> None:
    """No read-ahead in the file ranges `ranges` of `path`'s mappings (tables read a row at a time).

    And those ranges' pages leave the page cache where nothing maps them (POSIX_FADV_DONTNEED): a file
    written or read sequentially sits there in large folios, and a fault maps its whole folio (measured:
    looking up 6 token rows mapped 2.2 MiB of the embedding, 128 rows all of its 31 MiB, under
    MADV_RANDOM); read again one page at a time, each lookup maps its own page."""
    for m in _safe(path):
        for first, last in ranges:
            _advise(m.addresses(first, last), _MADV_RANDOM)
    if not ranges or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        for first, last in ranges:
            os.posix_fadvise(fd, first, last - first, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _safe(path: Path) -> list[Mapping]:
    return [m for m in mappings(path) if m.private_copies_kb == 0]


def _gaps(keep: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) that no range of `keep` covers."""
    gaps, at = [], lo
    for first, last in sorted(keep):
        if last <= at or first >= hi:
            continue
        if first > at:
            gaps.append((at, first))
        at = max(at, last)
    if at < hi:
        gaps.append((at, hi))
    return gaps


_libc = None


def _c_library():
    global _libc
    if _libc is None:
        # the symbols already loaded (libc's among them): ctypes.util.find_library would fork `ldconfig -p`
        # from a process that may map gigabytes of weights (a child of its size in the accounting, and time)
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc


def _advise(span: tuple[int, int] | None, advice: int) -> None:
    if span is None or os.name != "posix":
        return
    _c_library().madvise(span[0], span[1] - span[0], advice)  # advice only: a refusal changes nothing


def trim_heap() -> None:
    """Give the heap's free memory back to the system (glibc's malloc_trim). Session creation allocates
    and frees large temporary buffers (weights packed, then compared with the mapped ones); glibc keeps
    freed memory for reuse, and it would stay in the process's anonymous memory. No-op off glibc."""
    if os.name != "posix":
        return
    trim = getattr(_c_library(), "malloc_trim", None)
    if trim is not None:
        trim(0)
