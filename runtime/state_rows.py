"""The rows of a batch's states: taking, left-padding and stacking them.

A batch's state is a dict past.* name -> tensor with the batch first; K/V states (`StateRecord.grows`)
are (batch, kv_heads, past_len, head_dim) and share the batch's attention-mask columns: a row's own
keys are its mask's ones, right-aligned (rows are left-padded). NemotronH attention has no positional
encoding, so where a row's keys sit does not change its logits: rows of different pasts are stacked by
left-padding the shorter K/V with masked zeros. Tensors are numpy arrays or torch tensors (TensorRT's
device states); masks are numpy int64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KV_PAST_AXIS = 2  # K/V states are (batch, kv_heads, past_len, head_dim)


def take_rows(state: dict, rows: Sequence[int]) -> dict:
    rows = list(rows)
    return {name: x[rows] for name, x in state.items()}


def concat(parts: list, axis: int):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=axis)
    import torch

    return torch.cat(parts, dim=axis)


def pad_left(x, pad: int):
    """Zeros before the past axis of a K/V state (numpy array or torch tensor)."""
    shape = list(x.shape)
    shape[KV_PAST_AXIS] = pad
    zeros = np.zeros(shape, dtype=x.dtype) if isinstance(x, np.ndarray) else x.new_zeros(shape)
    return concat([zeros, x], KV_PAST_AXIS)


def widen(state: dict, mask: np.ndarray, width: int, kv_names: set[str]) -> tuple[dict, np.ndarray]:
    """Left-pad K/V and the mask (B, past) to `width` columns."""
    pad = width - mask.shape[1]
    if pad == 0:
        return state, mask
    state = {name: pad_left(x, pad) if name in kv_names else x for name, x in state.items()}
    return state, np.concatenate([np.zeros((mask.shape[0], pad), dtype=mask.dtype), mask], axis=1)


def stack(parts: Sequence[tuple[dict, np.ndarray]], kv_names: set[str]) -> tuple[dict, np.ndarray]:
    """(state, mask) batches -> one batch of all their rows, in order, K/V left-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    width = max(mask.shape[1] for _, mask in parts)
    wide = [widen(state, mask, width, kv_names) for state, mask in parts]
    state = {name: concat([s[name] for s, _ in wide], 0) for name in wide[0][0]}
    return state, np.concatenate([m for _, m in wide], axis=0)


def keep_rows(state: dict, mask: np.ndarray, rows: Sequence[int], kv_names: set[str]) -> tuple[dict, np.ndarray]:
    """Only `rows` of the batch, without the K/V columns that are padding in every remaining row."""
    rows = list(rows)
    mask = mask[rows]
    first = int(mask.any(axis=0).argmax())  # leading columns that are padding in every row
    state = {name: (x[rows][:, :, first:] if name in kv_names else x[rows]) for name, x in state.items()}
    return state, mask[:, first:]
