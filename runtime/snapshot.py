"""One sequence's states at a position, on the host: taken from a batch, restored into one, saved to a file.

Every state of the step contract is an explicit tensor (docs/step-contract.md), so the state of a
sequence after its first n tokens is just its row of every state (K/V trimmed to its own n columns)
plus the logits after token n, which choose the next token. A sequence restored from it and fed the
rest of its prompt computes what it computes from the start: a Mamba state is valid exactly at the
position it was taken, and the K/V are position-free (NemotronH attention has no positional encoding).

A snapshot file is safetensors (no pickle) with the model identity, the tokens and every state; it is
validated against the artifact at load like an artifact is: a damaged, foreign or mismatched file is one
clear error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nemotron_deploy.runtime import state_rows
from nemotron_deploy.runtime.artifact.dtypes import numpy_dtype
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import Manifest, StateRecord

FORMAT = "nemotron-deploy-state"
FORMAT_VERSION = "1"
_STATE = "state/"  # file tensor names: state/<past.* name>, tokens, logits


class SnapshotError(NemotronDeployError):
    """A snapshot that cannot be used here: unreadable, from another model, or not this sequence's."""


def model_identity(manifest: Manifest) -> str:
    """What a state is valid for: the artifact's graphs and weights (their SHA-256 and sizes), dtype and
    quantization. Hex SHA-256."""
    files = sorted((f.name, f.bytes, f.sha256) for f in manifest.files)
    key = {"files": files, "dtype": manifest.dtype, "target": manifest.target, "quantization": manifest.quantization}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def kv_names(states: Sequence[StateRecord]) -> set[str]:
    """The states that grow by a position per token (K/V)."""
    return {s.name for s in states if s.grows}


@dataclass(frozen=True, eq=False)
class StateSnapshot:
    """The state of one sequence after `tokens`.

    states: past.* name -> host array with batch 1 (K/V: (1, kv_heads, len(tokens), head_dim), the
    sequence's own columns only; bfloat16 as raw uint16, as runtime/artifact/dtypes.py carries it).
    logits: (vocab,) float32 after the last token. model: `model_identity` of the artifact it came from."""

    model: str
    tokens: tuple[int, ...]
    states: dict[str, np.ndarray] = field(repr=False)
    logits: np.ndarray = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.states.values()) + self.logits.nbytes + 8 * len(self.tokens)

    def save(self, path: str | Path) -> Path:
        """Write it as a safetensors file, atomically."""
        from safetensors.numpy import save

        from nemotron_deploy.runtime.artifact.atomic import write_file

        tensors = {_STATE + name: np.ascontiguousarray(x) for name, x in self.states.items()}
        tensors["tokens"] = np.asarray(self.tokens, dtype=np.int64)
        tensors["logits"] = np.ascontiguousarray(self.logits, dtype=np.float32)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model}
        try:
            return write_file(Path(path), save(tensors, metadata=meta))
        except OSError as e:
            raise SnapshotError(f"{path}: cannot write the snapshot ({e.strerror})") from None


def _host(x) -> np.ndarray:
    """A copy of a state slice on the host (numpy, or a torch tensor on any device)."""
    if isinstance(x, np.ndarray):
        return x.copy()
    import torch

    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16).copy()
    return x.numpy().copy()


def take(state: dict, mask: np.ndarray, row: int, tokens: Sequence[int], logits: np.ndarray, model: str, kv: set[str]) -> StateSnapshot:
    """Row `row` of a batch's state after `tokens` (its mask row ends with len(tokens) ones, the columns
    its K/V occupies) -> a host snapshot. logits: (vocab,) after the last of them."""
    n = len(tokens)
    own = int(mask[row].sum())
    if own != n or (n and not mask[row, -n:].all()):
        raise SnapshotError(f"internal: row {row} holds {own} positions in its mask, its tokens are {n}")
    width = mask.shape[1]
    states = {name: _host(x[row : row + 1, :, width - n :] if name in kv else x[row : row + 1]) for name, x in state.items()}
    return StateSnapshot(model, tuple(int(t) for t in tokens), states, np.array(logits, dtype=np.float32).reshape(-1))


def restore(backend, snapshots: Sequence[StateSnapshot], kv: set[str]) -> tuple[dict, np.ndarray]:
    """A batch of the snapshots' sequences, in order: state in the backend's kind (its
    `state_from_host`) and mask (B, widest) int64, K/V left-padded to the widest."""
    parts = []
    for snap in snapshots:
        parts.append((backend.state_from_host(dict(snap.states)), np.ones((1, len(snap.tokens)), dtype=np.int64)))
    return state_rows.stack(parts, kv)


def load(path: str | Path, manifest: Manifest) -> StateSnapshot:
    """Read a snapshot file and check it is a state of this artifact's model: format, model identity,
    every state present with its dtype and shape, the tokens in the vocabulary. SnapshotError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot file")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SnapshotError(f"{path}: not a readable snapshot file (safetensors: {e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: metadata format {meta.get('format')!r} version {meta.get('format_version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    model = model_identity(manifest)
    if meta.get("model") != model:
        raise SnapshotError(
            f"{path}: saved from another model or artifact (model {str(meta.get('model'))[:12]}), {manifest.path} is {model[:12]}"
        )
    tokens, logits = tensors.pop("tokens", None), tensors.pop("logits", None)
    vocab = manifest.model.vocab_size
    if tokens is None or tokens.dtype != np.int64 or tokens.ndim != 1 or not 1 <= tokens.size <= manifest.model.max_position_embeddings:
        raise SnapshotError(f"{path}: tensor 'tokens': expected int64 (n,) with 1 <= n <= {manifest.model.max_position_embeddings}")
    if tokens.min() < 0 or tokens.max() >= vocab:
        raise SnapshotError(f"{path}: tensor 'tokens': ids outside the vocabulary (0..{vocab - 1})")
    if logits is None or logits.dtype != np.float32 or logits.shape != (vocab,):
        raise SnapshotError(f"{path}: tensor 'logits': expected float32 ({vocab},)")
    states = {}
    for record in manifest.states:
        states[record.name] = _checked_state(path, tensors.pop(_STATE + record.name, None), record, tokens.size)
    if tensors:
        raise SnapshotError(f"{path}: tensor {sorted(tensors)[0]!r} is not a state of {manifest.path}")
    return StateSnapshot(model, tuple(tokens.tolist()), states, logits)


def _checked_state(path: Path, x: np.ndarray | None, record: StateRecord, n: int) -> np.ndarray:
    name = _STATE + record.name
    if x is None:
        raise SnapshotError(f"{path}: tensor {name!r} missing")
    expected = [1 if d == "batch" else n if record.grows and i == state_rows.KV_PAST_AXIS else d for i, d in enumerate(record.shape)]
    if (
        x.dtype != numpy_dtype(record.dtype)
        or len(x.shape) != len(expected)
        or any(isinstance(e, int) and e != s for e, s in zip(expected, x.shape))
    ):
        raise SnapshotError(f"{path}: tensor {name!r} is {x.dtype} {list(x.shape)}, expected {record.dtype} {expected}")
    return x
