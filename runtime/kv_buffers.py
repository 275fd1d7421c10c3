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
    """The buffers this runtime appended to, each with how many of its positions its newest view covers.

    Held weakly: a buffer lives as long as a view of it (a state someone holds) does. Any number of
    sequences' states can be stepped in turn (concurrent generations on one backend): each has its own
    buffers."""

    def __init__(self):
        self._filled: dict[int, tuple[weakref.ref, int]] = {}  # id(buffer) -> (buffer, filled positions)

    def buffer(self, past: np.ndarray, total: int) -> np.ndarray:
        """The buffer (B, Hkv, capacity >= total, D) a step to `total` positions appends to: `past`'s own
        where `past` is the newest view of it and there is room, else a new one holding `past`'s positions."""
        buf, n = past.base, past.shape[KV_PAST_AXIS]
        ref, filled = self._filled.get(id(buf), (None, -1))
        if (
            ref is not None
            and ref() is buf
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

    def view(self, buf: np.ndarray, total: int) -> np.ndarray:
        """The state (B, Hkv, total, D) after a step appended to `buf`: its first `total` positions, from
        now on the newest view of it."""
        key = id(buf)
        ref = self._filled[key][0] if key in self._filled else weakref.ref(buf, lambda _, key=key: self._filled.pop(key, None))
        self._filled[key] = (ref, total)
        return buf[:, :, :total]
