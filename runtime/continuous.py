"""Continuous batching: sequences join and leave one running batch between decode steps.

Each active sequence is one row of the batch's states. Its attention-mask row marks which K/V columns
are its own: a sequence that joins a batch whose K/V is wider is left-padded (masked keys), one that
is wider pads the others. NemotronH attention has no positional encoding, so where a sequence's keys
sit does not change its logits, and Mamba states are per row: every sequence gets the tokens it would
get alone (tests/runtime/test_continuous.py). One decode step serves every active sequence, so N
concurrent sequences cost about max(lengths) steps, not sum(lengths).

The batcher is driven by one thread (`run`); `submit` and `cancel` may be called from any thread.
States are whatever the backend uses (numpy arrays, torch CUDA tensors); masks are numpy.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nemotron_deploy.runtime import decode, snapshot, state_rows
from nemotron_deploy.runtime.artifact.manifest import StateRecord
from nemotron_deploy.runtime.prefix_cache import PrefixCache
from nemotron_deploy.runtime.sampling import Sampler, Sampling
from nemotron_deploy.runtime.snapshot import StateSnapshot
from nemotron_deploy.runtime.stop_text import StopText

CANCELLED = "cancelled"  # the on_error message of a sequence whose request was cancelled


def _no_token(token: int, finish_reason: str | None) -> None:
    pass


def _no_error(message: str) -> None:
    pass


def _never() -> bool:
    return False


@dataclass
class Request:
    """One sequence to generate. `on_token(token, finish_reason)` is called for every new token, with
    the finish reason ("eos" | "stop" | "length") on the last one and None before (with a `text`, its
    `piece` holds the text that token released); `on_error(message)` instead
    when the sequence ends unfinished: the backend failed, or `cancelled()` (asked before every step:
    a client that went away) said so. All three run on the batcher's thread: keep them short."""

    prompt: Sequence[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop_token_ids: frozenset[int] = frozenset()
    text: StopText | None = None  # its text as tokens arrive, with its stop strings (finish reason "stop")
    snapshot_at: tuple[int, ...] = ()  # prompt lengths where the prefix cache also keeps its state (a chat's earlier turns)
    on_token: Callable[[int, str | None], None] = _no_token
    on_error: Callable[[str], None] = _no_error
    cancelled: Callable[[], bool] = _never


@dataclass
class _Active:
    request: Request
    sampler: Sampler
    generated: int = 0
    last_token: int = 0
    tokens: list[int] = field(default_factory=list)  # generated so far (what the penalties count)


@dataclass
class _Prefill:
    """Sequences being admitted together: their left-padded prompts, and how far the prefill has got
    (a sequence restored from the prefix cache is admitted alone, `done` at its snapshot's length)."""

    requests: list[Request]
    ids: np.ndarray  # (B, T) int64
    mask: np.ndarray  # (B, T) int64
    state: dict
    done: int = 0  # prompt columns consumed
    logits: np.ndarray | None = None  # (B, V) after the columns consumed


@dataclass
class Counters:
    """What the batcher has done since it started (served as metrics by the Triton model)."""

    decode_steps: int = 0  # decode graph calls, each for every active sequence
    prefill_calls: int = 0  # prefill graph calls (a batch of sequences admitted together, or one chunk of it)
    sequences: int = 0  # sequences finished (eos, length or cancelled)
    tokens: int = 0  # tokens generated
    prefill_tokens: int = 0  # prompt tokens computed by prefill calls (padding not counted)
    prefix_cache_hits: int = 0  # sequences admitted from a cached prefix
    prefix_cache_misses: int = 0  # sequences admitted from the start while the cache is on
    prefix_tokens_reused: int = 0  # prompt tokens not prefilled thanks to the cache


class ContinuousBatcher:
    """Runs up to `max_batch` sequences at once on `backend` (see runtime/backends/__init__.py).

    max_length: the model's maximum sequence length (prompt + generated); pad_token_id fills padded
    positions; prefill_chunk_size: prompt tokens per prefill call, one call per step between the
    running sequences' decode steps (None: a whole prompt in one call); never more than the backend
    takes in one call (`decode.piece_end`, as the decode loop's prefill). prefix_cache: where the
    states at the end of every prefill piece and prompt are kept, and a new prompt starts from the
    longest of them it begins with (runtime/prefix_cache.py; None: every prompt from the start).
    model: the snapshots' `model_identity`.
    """

    def __init__(
        self,
        backend,
        states: Sequence[StateRecord],
        *,
        max_batch: int,
        max_length: int,
        pad_token_id: int = 0,
        prefill_chunk_size: int | None = None,
        prefix_cache: PrefixCache | None = None,
        model: str = "",
    ):
        self.backend = backend
        self.prefix_cache = prefix_cache if prefix_cache is not None and prefix_cache.budget > 0 else None
        self.model = model
        self.max_batch = max_batch
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.prefill_chunk_size = prefill_chunk_size
        self.counters = Counters()
        self._kv_names = {s.name for s in states if s.grows}
        self._waiting: deque[Request] = deque()
        self._wake = threading.Condition()
        self._active: list[_Active] = []
        self._prefill: _Prefill | None = None  # sequences taken from the queue, prompts not yet done
        self._state: dict | None = None
        self._mask: np.ndarray | None = None  # (active, width) int64

    # -- any thread ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()

    def wake(self) -> None:
        """Make `run` look again (after a cancel, or to stop it)."""
        with self._wake:
            self._wake.notify()

    @property
    def active(self) -> int:
        """Sequences in the running batch."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Sequences queued for a free slot."""
        return len(self._waiting)

    @property
    def prefix_cache_bytes(self) -> int:
        """Bytes the prefix cache holds."""
        return self.prefix_cache.bytes if self.prefix_cache else 0

    # -- the batcher's thread -----------------------------------------------------------------------
    def run(self, stop: threading.Event, after_step: Callable[[bool], None] | None = None) -> None:
        """Step until `stop` is set (then call `wake`). `after_step(idle)` runs after every step, and
        with idle=True before the thread waits for work."""
        while not stop.is_set():
            with self._wake:
                idle = not self.busy
            if idle:
                if after_step:
                    after_step(True)
                with self._wake:
                    if not self._waiting and not stop.is_set():
                        self._wake.wait()
                continue
            try:
                self.step()
            except Exception as e:  # a callback's bug must not stop the thread every stream waits on
                self.fail_all(f"internal error: {type(e).__name__}: {e}")
            if after_step:
                after_step(False)

    def step(self) -> None:
        """Drop cancelled sequences; admit waiting ones or go on with their prefill (one chunk per step
        when `prefill_chunk_size` is set, so a long prompt does not stall the running sequences); then
        one decode step for every active sequence."""
        alive = []
        for i, seq in enumerate(self._active):
            if seq.request.cancelled():
                self._cancel(seq.request)
            else:
                alive.append(i)
        self._keep(alive)
        self._prefill_chunk()
        if self._active:
            self._decode()

    @property
    def busy(self) -> bool:
        """Anything to step: active, prefilling or waiting sequences."""
        return bool(self._active or self._prefill or self._waiting)

    def fail_all(self, message: str) -> None:
        """End every active, prefilling and waiting sequence with `message`; start from an empty batch."""
        with self._wake:
            prefilling = self._prefill.requests if self._prefill else []
            requests = list({id(r): r for r in [*prefilling, *(seq.request for seq in self._active), *self._waiting]}.values())
            self._waiting.clear()
        self._active, self._prefill, self._state, self._mask = [], None, None, None
        for request in requests:
            try:
                request.on_error(message)
            except Exception:  # nothing more can be told to this one
                pass
        self.counters.sequences += len(requests)

    def _take_waiting(self) -> tuple[list[Request], StateSnapshot | None]:
        """Requests to admit together: waiting ones from the start, up to a free slot each, or one
        with a cached prefix (with its snapshot), which is prefilled alone: a restored Mamba state
        cannot take the left padding a batch of other lengths would put after its past."""
        with self._wake:
            taken = []
            while self._waiting and len(self._active) + len(taken) < self.max_batch:
                request = self._waiting[0]
                if request.cancelled():
                    self._cancel(self._waiting.popleft())
                    continue
                snap = self._cached_prefix(request.prompt)
                if snap is not None:
                    if taken:
                        break  # admitted next, alone
                    return [self._waiting.popleft()], snap
                taken.append(self._waiting.popleft())
            return taken, None

    def _cached_prefix(self, prompt: Sequence[int]) -> StateSnapshot | None:
        """The longest cached prefix the prompt can continue from exactly: the whole prompt (its
        snapshot's logits give the first token), or one that leaves a rest the prefill graph computes
        as it computes it from the start (not a single token where one new token after a past is a
        decode step: `decode.piece_end`)."""
        if self.prefix_cache is None:
            return None
        one_is_decode = self.backend.one_token_is_decode
        return self.prefix_cache.longest(prompt, lambda n: not (one_is_decode and len(prompt) - n == 1))

    def _cancel(self, request: Request) -> None:
        request.on_error(CANCELLED)
        self.counters.sequences += 1

    def _admit(self) -> _Prefill | None:
        requests, snap = self._take_waiting()
        if not requests:
            return None
        if snap is not None:
            state, _ = snapshot.restore(self.backend, [snap], self._kv_names)
            ids = np.asarray([requests[0].prompt], dtype=np.int64)
            self.counters.prefix_cache_hits += 1
            self.counters.prefix_tokens_reused += len(snap.tokens)
            return _Prefill(requests, ids, np.ones_like(ids), state, done=len(snap.tokens), logits=snap.logits[None])
        if self.prefix_cache is not None:
            self.counters.prefix_cache_misses += len(requests)
        ids, mask = decode.left_pad([r.prompt for r in requests], self.pad_token_id)
        return _Prefill(requests, ids, mask, self.backend.initial_state(len(requests)))

    def _prefill_chunk(self) -> None:
        """One prefill graph call for the sequences being admitted (taking them from the queue first);
        when their prompts are done, each gets its first token and the unfinished ones join the batch."""
        if self._prefill is None:
            self._prefill = self._admit()
            if self._prefill is None:
                return
        p = self._prefill
        if p.done < p.ids.shape[1]:  # else: the whole prompt was cached
            end = self._piece_end(p)
            try:
                p.logits, p.state = self.backend.step("prefill", p.ids[:, p.done : end], p.mask[:, :end], p.state)
            except Exception as e:  # a failing backend ends these requests, not the server
                self._prefill = None
                for request in p.requests:
                    request.on_error(f"prefill failed: {e}")
                self.counters.sequences += len(p.requests)
                return
            self.counters.prefill_calls += 1
            self.counters.prefill_tokens += int(p.mask[:, p.done : end].sum())
            p.done = end
            self._remember(p)
            if end < p.ids.shape[1]:
                return
        joining = [_Active(r, Sampler(r.sampling)) for r in p.requests]
        staying = [row for row, seq in enumerate(joining) if not self._emit(seq, p.logits[row : row + 1])]
        if staying:
            self._join([joining[row] for row in staying], state_rows.take_rows(p.state, staying), p.mask[staying])
        self._prefill = None

    def _piece_end(self, p: _Prefill) -> int:
        """Where the next prefill piece ends (`decode.piece_end`), or sooner at a row's `snapshot_at`
        (so that its state there is snapshotted), keeping pieces of >= 2 tokens on both sides (one new
        token after a past would be a decode step: `decode.piece_end`)."""
        total = p.ids.shape[1]
        end = decode.piece_end(self.backend, self.prefill_chunk_size, p.ids.shape[0], p.done, total)
        if self.prefix_cache is None:
            return end
        for request in p.requests:
            pad = total - len(request.prompt)
            for n in request.snapshot_at:
                if p.done + 2 <= pad + n < end and total - (pad + n) >= 2:
                    end = pad + n
        return end

    def _remember(self, p: _Prefill) -> None:
        """Snapshot every row at the columns its prefill has consumed, into the prefix cache."""
        if self.prefix_cache is None:
            return
        mask = p.mask[:, : p.done]
        rows = len(p.requests)
        fixed = sum(x.nbytes for name, x in p.state.items() if name not in self._kv_names) // rows + p.logits[0].nbytes
        per_token = sum(x.nbytes for name, x in p.state.items() if name in self._kv_names) // rows // max(p.done, 1)
        for row, request in enumerate(p.requests):
            consumed = len(request.prompt) - (p.ids.shape[1] - p.done)  # its own tokens so far (rows are left-padded)
            if consumed > 0 and fixed + per_token * consumed <= self.prefix_cache.budget:  # else it could not be kept: no copy
                snap = snapshot.take(p.state, mask, row, request.prompt[:consumed], p.logits[row], self.model, self._kv_names)
                self.prefix_cache.put(snap)

    def _decode(self) -> None:
        tokens = np.array([[a.last_token] for a in self._active], dtype=np.int64)
        mask = np.concatenate([self._mask, np.ones((len(self._active), 1), dtype=np.int64)], axis=1)
        try:
            logits, self._state = self.backend.step("decode", tokens, mask, self._state)
        except Exception as e:
            for seq in self._active:
                seq.request.on_error(f"decode step failed: {e}")
            self.counters.sequences += len(self._active)
            self._keep([])
            return
        self._mask = mask
        self.counters.decode_steps += 1
        staying = [row for row, seq in enumerate(self._active) if not self._emit(seq, logits[row : row + 1])]
        self._keep(staying)

    def _emit(self, seq: _Active, logits: np.ndarray) -> bool:
        """Choose and send one token for `seq` from its logits (1, V); True when the sequence is done."""
        request = seq.request
        token = int(seq.sampler(logits, [request.prompt], [seq.tokens])[0])
        seq.generated += 1
        seq.last_token = token
        seq.tokens.append(token)
        self.counters.tokens += 1
        reason = None
        if request.text is not None:
            request.text.push(token)
        if request.text is not None and request.text.stopped:
            reason = "stop"
        elif token in request.stop_token_ids:
            reason = "eos"
        elif seq.generated >= request.max_new_tokens or len(request.prompt) + seq.generated >= self.max_length:
            reason = "length"
        if reason is not None and request.text is not None:
            request.text.flush()
        request.on_token(token, reason)
        if reason is not None:
            self.counters.sequences += 1
        return reason is not None

    # -- the batch's rows ---------------------------------------------------------------------------
    def _join(self, joining: list[_Active], state: dict, mask: np.ndarray) -> None:
        """Append rows to the running batch, left-padding K/V and masks to a common width."""
        if not self._active:
            self._active, self._state, self._mask = joining, state, mask
            return
        self._state, self._mask = state_rows.stack([(self._state, self._mask), (state, mask)], self._kv_names)
        self._active = self._active + joining

    def _keep(self, rows: list[int]) -> None:
        """Keep only `rows` of the batch; drop K/V columns that no remaining row uses."""
        if len(rows) == len(self._active):
            return
        self._active = [self._active[r] for r in rows]
        if not rows:
            self._state = self._mask = None
            return
        self._state, self._mask = state_rows.keep_rows(self._state, self._mask, rows, self._kv_names)
