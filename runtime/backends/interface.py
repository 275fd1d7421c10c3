"""`Backend`: what every backend offers the one decode loop (runtime/decode.py), the continuous batcher
(runtime/continuous.py) and the state snapshots (runtime/snapshot.py).

A backend runs the artifact's two step graphs. `step` consumes T new tokens for B sequences and returns
the last position's logits with the next state; states are opaque to the loop except through
`state_from_host` (a snapshot's numpy state in the backend's own kind) and runtime/state_rows.py.
Implementations subclass `Backend` and inherit the defaults of the optional members.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnxruntime" | "tensorrt" | "reference" | "torch"

    # Most new tokens one prefill call takes (a TensorRT engine's profile); None: any number.
    max_prefill_tokens: int | None = None
    # Most sequences and past + new tokens one call takes (a TensorRT engine's profile); None: no limit.
    max_batch: int | None = None
    max_seq_len: int | None = None
    # One graph serves both step kinds: one new token after a past runs as a decode step there
    # (decode.piece_end never leaves a last prefill piece of one token).
    one_token_is_decode: bool = False

    def initial_state(self, batch: int) -> dict[str, Any]:
        """Every state of the step contract for `batch` empty sequences (zeros; K/V of past length 0)."""
        ...

    def step(
        self, graph: str, input_ids: np.ndarray, attention_mask: np.ndarray, state: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One call of graph "prefill" or "decode": input_ids (B, T) int64, attention_mask (B, past + T)
        int64 (0: left padding), state as `initial_state` gives it -> (logits (B, V) float32 of the last
        position, the next state)."""
        ...

    def prefill_tokens(self, batch: int, past_len: int) -> int | None:
        """The backend's own choice of prompt tokens for the next prefill call of `batch` sequences after
        `past_len` tokens (e.g. what keeps onnxruntime's attention scratch bounded); None: no preference."""
        return None

    def state_from_host(self, state: dict[str, np.ndarray]) -> dict[str, Any]:
        """A state held as numpy arrays (a snapshot's) in the backend's own kind (e.g. device buffers)."""
        return state
