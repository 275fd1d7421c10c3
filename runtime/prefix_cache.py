"""Snapshots of sequences' states keyed by the tokens they follow, so that a prompt that begins with a
cached prefix (the earlier turns of a conversation) is prefilled only from there.

A Mamba layer's state is valid only at the exact position where it was taken, so the cache does not
share blocks of K/V as attention-only servers do: it holds whole snapshots (runtime/snapshot.py) at
positions the continuous batcher passed anyway, the ends of its prefill pieces and of each prompt, and
a new prompt restores the longest one whose tokens begin it. Least recently used snapshots go first
when the bytes held would pass the budget; the bytes held never pass it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from nemotron_deploy.runtime.snapshot import StateSnapshot

MIB = 1 << 20
DEFAULT_MAX_MB = 1024  # per generate-model instance
DEFAULT_MEMORY_SHARE = 16  # ... and at most 1/16 of the machine's memory


def default_budget_mb() -> int:
    """min(1024 MiB, 1/16 of physical memory): a few dozen conversations of a small model, a few of a
    large one (a Nemotron-H-8B snapshot is ~200 MiB of Mamba state), without crowding the weights."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return DEFAULT_MAX_MB
    return max(0, min(DEFAULT_MAX_MB, physical // DEFAULT_MEMORY_SHARE // MIB))


def prefix_key(tokens: Sequence[int]) -> bytes:
    return hashlib.blake2b(np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=16).digest()


class PrefixCache:
    """budget_bytes: the most the snapshots may hold together (0: nothing is kept). Used by one thread
    (the batcher's)."""

    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self._entries: OrderedDict[bytes, StateSnapshot] = OrderedDict()  # least recently used first
        self._lengths: Counter[int] = Counter()  # prefix length -> entries of that length
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, snap: StateSnapshot) -> None:
        """Keep `snap` (if it fits the budget at all), evicting the least recently used as needed."""
        if snap.nbytes > self.budget:
            return
        key = prefix_key(snap.tokens)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        while self._entries and self.bytes + snap.nbytes > self.budget:
            self._evict()
        self._entries[key] = snap
        self._lengths[len(snap.tokens)] += 1
        self.bytes += snap.nbytes

    def longest(self, prompt: Sequence[int], usable: Callable[[int], bool] = lambda n: True) -> StateSnapshot | None:
        """The snapshot of the longest cached prefix of `prompt` (the whole prompt included) whose
        length `usable` accepts; it becomes the most recently used. None: no cached prefix."""
        for n in sorted((n for n in self._lengths if n <= len(prompt) and usable(n)), reverse=True):
            key = prefix_key(prompt[:n])
            snap = self._entries.get(key)
            if snap is not None and snap.tokens == tuple(int(t) for t in prompt[:n]):  # a hash collision is a miss
                self._entries.move_to_end(key)
                return snap
        return None

    def _evict(self) -> None:
        _, snap = self._entries.popitem(last=False)
        n = len(snap.tokens)
        self._lengths[n] -= 1
        if not self._lengths[n]:
            del self._lengths[n]
        self.bytes -= snap.nbytes
