"""K/V caches appended to in place: the onnxruntime runtime's half of `export --kv-in-place`.

An in-place artifact's attention is onnxruntime's GroupQueryAttention. It takes a past K/V longer than
the past (a buffer whose first `past` positions are the cache) and writes the step's new keys after
them; bound as both the node's past and its present (IO binding), the buffer is appended to in place,
so a decode step no longer copies the whole cache into a new present (at Nemotron-H-4B's widths and
32k of past, 2.5x less time per attention layer: benchmarks/results/probe_onnxruntime_cpu.md).

The rest of the runtime keeps seeing the step contract's K/V, (B, Hkv, past, D) arrays: here they are
views of a buffer's first `past` positions. A step appends in place only to a view that is the newest
one of its buffer (the buffer holds exactly the view's positions). Any other K/V (rows taken or stacked
by the continuous batcher, a snapshot restored, an older state stepped again) is copied into a new
buffer first, so every view handed out stays valid: appending writes only past the newest view's end.
"""

from __future__ import annotations

import weakref

import numpy as np

KV_PAST_AXIS = 2  # (B, Hkv, past, D)
_ROUND = 256  # capacities are multiples of this many positions
_GROWTH = 1.5  # a full buffer is copied into one this much longer (amortized: a few copies per token)


def capacity(total: int, past: int) -> int:
    """Positions of a new buffer for a step to `total` positions after `past`: room for the step and at
    least _ROUND more, and _GROWTH times the past, so that a decode copies its cache O(log) times."""
    want = max(total + _ROUND, int(past * _GROWTH))
    return -(-want // _ROUND) * _ROUND


class KVBuffers:
    """The newest buffer of each K/V state name, and how many positions of it are written.

    Buffers are held weakly: one lives as long as a view of it (a state the caller holds) does."""

    def __init__(self):
        self._newest: dict[str, tuple[weakref.ref, int]] = {}

    def buffer(self, name: str, past: np.ndarray, total: int) -> np.ndarray:
        """The buffer (B, Hkv, capacity >= total, D) a step to `total` positions appends to: `past`'s own
        where `past` is the newest view of it and there is room, else a new one holding `past`'s positions."""
        ref, filled = self._newest.get(name, (None, -1))
        buf = ref() if ref is not None else None
        n = past.shape[KV_PAST_AXIS]
        if (
            buf is not None
            and past.base is buf
            and n == filled
            and past.shape == buf.shape[:KV_PAST_AXIS] + (n,) + buf.shape[KV_PAST_AXIS + 1 :]
            and past.ctypes.data == buf.ctypes.data
            and buf.shape[KV_PAST_AXIS] >= total
        ):
            return buf
        shape = list(past.shape)
        shape[KV_PAST_AXIS] = capacity(total, n)
        fresh = np.zeros(shape, dtype=past.dtype)
        fresh[:, :, :n] = past
        return fresh

    def view(self, name: str, buf: np.ndarray, total: int) -> np.ndarray:
        """The state (B, Hkv, total, D) after a step appended to `buf`: its first `total` positions, from
        now on the newest view of it."""
        self._newest[name] = (weakref.ref(buf), total)
        return buf[:, :, :total]
