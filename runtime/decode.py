"""The decode loop, shared by every backend: left-padded (optionally chunked) prefill, then one token
per step until EOS or the token budget. A backend only has to provide `initial_state` and `step`, and
may say how many prompt tokens one prefill call takes (`max_prefill_tokens`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nemotron_deploy.runtime import snapshot, state_rows
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.sampling import Sampler, Sampling
from nemotron_deploy.runtime.snapshot import StateSnapshot
from nemotron_deploy.runtime.stop_text import StopText


@dataclass
class Generation:
    """new_token_ids[i]: tokens generated for prompt i (EOS included when it ended the sequence)."""

    new_token_ids: list[list[int]]
    finish_reasons: list[str]  # "eos" | "stop" (a stop string) | "length" (max_new_tokens, or the model's max_position_embeddings)
    prefill_logits: np.ndarray | None = field(default=None, repr=False)  # (B, V) after the prompt
    text: list[str] | None = None  # the new tokens decoded, when the artifact has a tokenizer


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids (B, T) and attention_mask (B, T) int64, prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, max_length: int) -> None:
    if not prompts:
        raise NemotronDeployError("no prompt given")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise NemotronDeployError(f"prompt {i} is empty")
        bad = [t for t in prompt if not 0 <= int(t) < vocab_size]
        if bad:
            raise NemotronDeployError(f"prompt {i}: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
        if len(prompt) > max_length:
            raise NemotronDeployError(f"prompt {i} has {len(prompt)} tokens, the model's maximum is {max_length} (max_position_embeddings)")


def prefill_limit(backend, chunk_size: int | None, batch: int = 1, past_len: int = 0) -> int | None:
    """Prompt tokens for the next prefill call of `batch` sequences after `past_len` tokens: `chunk_size`
    if given, else the backend's own choice (its `prefill_tokens(batch, past_len)`, e.g. what
    keeps onnxruntime's attention scratch bounded), and never more than the backend takes in one call
    (its `max_prefill_tokens`, e.g. a TensorRT engine's profile). None: the whole prompt."""
    wanted = chunk_size or backend.prefill_tokens(batch, past_len)
    return min((n for n in (wanted, backend.max_prefill_tokens) if n), default=None)


def piece_end(backend, chunk_size: int | None, batch: int, start: int, total: int) -> int:
    """Where the prefill piece that starts at `start` of a `total`-token prompt ends: `prefill_limit`
    tokens on. A backend whose `one_token_is_decode` is true (one graph serving both kinds: one new
    token after a past is a decode step there, as in transformers: its recurrent path, without the
    prefill dt clamp) never gets a last piece of one token after others, which would not compute what
    one call does: the piece before it gives up a token (and stays within every limit), or a 2-token
    piece takes the last one too. Only `chunk_size` 1 asks for one-token pieces. Other backends (separate
    prefill and decode graphs: TensorRT engines, as the C++ runtime's loop) split at `prefill_limit`."""
    end = min(start + (prefill_limit(backend, chunk_size, batch, start) or total), total)
    if backend.one_token_is_decode and total - end == 1 and end - start >= 2:
        return end - 1 if end - start >= 3 else total
    return end


def prefill(backend, ids: np.ndarray, mask: np.ndarray, chunk_size: int | None = None, state: dict | None = None, start: int = 0):
    """Run the prompt through the prefill graph, in one step or in pieces (`piece_end`): the same
    result for any split. `state` and `start`: the state after the first `start` columns (default: a
    new sequence). Returns last-position logits (B, V) and the state."""
    state = backend.initial_state(ids.shape[0]) if state is None else state
    logits = None
    while start < ids.shape[1]:
        end = piece_end(backend, chunk_size, ids.shape[0], start, ids.shape[1])
        logits, state = backend.step("prefill", ids[:, start:end], mask[:, :end], state)
        start = end
    return logits, state


def prefill_rows(
    backend,
    prompts: Sequence[Sequence[int]],
    pad_token_id: int,
    chunk_size: int | None = None,
    starts: Sequence[StateSnapshot | None] | None = None,
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Prefill a batch of prompts, each from the start or from a snapshot of its first tokens
    (runtime/snapshot.py; its tokens must begin the prompt). Prompts from the start are prefilled
    together, left-padded; each restored one alone (a Mamba state cannot take padding after its
    past); the rows are then stacked. Returns last-position logits (B, V), the state and the mask
    (B, width) int64."""
    if starts is None or all(snap is None for snap in starts):  # every prompt from the start: one batch
        ids, mask = left_pad(prompts, pad_token_id)
        return (*prefill(backend, ids, mask, chunk_size), mask)
    fresh = [row for row, snap in enumerate(starts) if snap is None]
    groups = []  # (rows, logits, state, mask)
    if fresh:
        ids, mask = left_pad([prompts[row] for row in fresh], pad_token_id)
        logits, state = prefill(backend, ids, mask, chunk_size)
        groups.append((fresh, logits, state, mask))
    kv = snapshot.kv_names(backend.manifest.states)
    for row, snap in enumerate(starts):
        if snap is None:
            continue
        state, _ = snapshot.restore(backend, [snap], kv)
        ids = np.asarray([prompts[row]], dtype=np.int64)
        mask = np.ones_like(ids)
        logits, state = prefill(backend, ids, mask, chunk_size, state, start=len(snap.tokens))
        groups.append(([row], snap.logits[None] if logits is None else logits, state, mask))
    rows = [row for group in groups for row in group[0]]
    state, mask = state_rows.stack([(g[2], g[3]) for g in groups], kv)
    logits = np.concatenate([g[1] for g in groups], axis=0)
    if rows != sorted(rows):
        order = np.argsort(rows).tolist()
        state, mask, logits = state_rows.take_rows(state, order), mask[order], logits[order]
    return logits, state, mask


def check_starts(prompts: Sequence[Sequence[int]], starts: Sequence[StateSnapshot | None], model: str) -> None:
    """Each snapshot must be of this model and of the first tokens of its prompt."""
    if len(starts) != len(prompts):
        raise NemotronDeployError(f"{len(starts)} start snapshots for {len(prompts)} prompts: expected one (or None) per prompt")
    for i, (prompt, snap) in enumerate(zip(prompts, starts)):
        if snap is None:
            continue
        if snap.model != model:
            raise snapshot.SnapshotError(f"prompt {i}: its start snapshot is of another model or artifact")
        if len(snap.tokens) > len(prompt) or tuple(int(t) for t in prompt[: len(snap.tokens)]) != snap.tokens:
            raise snapshot.SnapshotError(
                f"prompt {i}: its start snapshot's {len(snap.tokens)} tokens are not the first tokens of the prompt"
            )


def generate(
    backend,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    max_length: int,
    prefill_chunk_size: int | None = None,
    on_token: Callable[[int, int], None] | None = None,
    texts: Sequence[StopText] | None = None,
    on_text: Callable[[int, str], None] | None = None,
    starts: Sequence[StateSnapshot | None] | None = None,
) -> Generation:
    """Generate for a batch of prompts of any lengths. `on_token(row, token)` streams each new token.

    A sequence stops at one of `eos_token_ids`, at a stop string of its `texts[row]` (its text as the
    tokens arrive: runtime/stop_text.py), or when it reaches `max_length` tokens in all; the batch
    stops when every sequence has stopped or after `max_new_tokens` steps. With `texts`,
    `on_text(row, piece)` follows every `on_token`, with the text that token released (the last one
    of a sequence also releases what was held back). `starts`: per prompt, None or a snapshot of its
    first tokens to continue from (`prefill_rows`).
    """
    logits, state, mask = prefill_rows(backend, prompts, pad_token_id, prefill_chunk_size, starts)
    prefill_logits = logits
    sampler = Sampler(sampling)
    eos = set(eos_token_ids)
    out: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    done = np.zeros(len(prompts), dtype=bool)
    for step in range(max_new_tokens):
        tokens = sampler(logits, prompts, out)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            out[row].append(token)
            if on_token:
                on_token(row, token)
            if texts is not None:
                texts[row].push(token)
            if texts is not None and texts[row].stopped:
                done[row], reasons[row] = True, "stop"
            elif token in eos:
                done[row], reasons[row] = True, "eos"
            elif len(prompts[row]) + len(out[row]) >= max_length:
                done[row] = True
            if texts is not None:
                if done[row] or step == max_new_tokens - 1:
                    texts[row].flush()
                if on_text:
                    on_text(row, texts[row].piece)
        if done.all() or step == max_new_tokens - 1:
            break
        tokens = np.where(done, pad_token_id, tokens)  # finished rows keep stepping; their output is ignored
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        logits, state = backend.step("decode", tokens[:, None], mask, state)
    return Generation(out, reasons, prefill_logits)
