"""How close one artifact's next-token logits are to another's (e.g. int4 weights against float32).

Teacher forcing: both backends read the same tokens (the reference's own greedy continuation), so
every position is compared, not only those before the first disagreement; a free-running greedy
decode is also compared for how many tokens it keeps matching.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nemotron_deploy.runtime.decode import left_pad, prefill


@dataclass(frozen=True)
class Agreement:
    top1: float  # share of positions where both pick the same greedy token
    greedy_prefix: int  # tokens a free-running greedy decode of the candidate matches the reference's
    max_abs_error: float  # largest |logit difference| over all positions
    relative_error: float  # RMS of the logit difference over the RMS of the reference logits
    positions: int

    def to_json(self) -> dict:
        return asdict(self)


def _forced_logits(backend, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """Logits (len(continuation), V) before each continuation token, reading the continuation."""
    ids, mask = left_pad([prompt], 0)
    logits, state = prefill(backend, ids, mask)
    out = [logits[0]]
    for token in continuation[:-1]:
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        logits, state = backend.step("decode", np.array([[token]], dtype=np.int64), mask, state)
        out.append(logits[0])
    return np.stack(out).astype(np.float64)


def greedy_tokens(backend, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `prompt` (no EOS stop: a fixed length to compare)."""
    ids, mask = left_pad([prompt], 0)
    logits, state = prefill(backend, ids, mask)
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        logits, state = backend.step("decode", np.array([[tokens[-1]]], dtype=np.int64), mask, state)
    return tokens


def compare(reference, candidate, prompt: list[int], steps: int = 64) -> Agreement:
    """`candidate`'s logits against `reference`'s over `steps` positions after `prompt` (both backends)."""
    tokens = greedy_tokens(reference, prompt, steps)
    ref = _forced_logits(reference, prompt, tokens)
    got = _forced_logits(candidate, prompt, tokens)
    mine = greedy_tokens(candidate, prompt, steps)
    prefix = next((i for i, (a, b) in enumerate(zip(tokens, mine)) if a != b), steps)
    diff = got - ref
    return Agreement(
        top1=float((got.argmax(-1) == ref.argmax(-1)).mean()),
        greedy_prefix=prefix,
        max_abs_error=float(np.abs(diff).max()),
        relative_error=float(np.sqrt((diff**2).mean() / (ref**2).mean())),
        positions=steps,
    )
