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


def run(backend, prompt: list[int], steps: int, forced: list[int] | None = None) -> tuple[list[int], np.ndarray]:
    """`steps` tokens after `prompt` and the logits (steps, V) float64 that preceded each: the backend's
    own greedy choices, or with `forced` the given tokens (teacher forcing). No EOS stop."""
    ids, mask = left_pad([prompt], 0)
    logits, state = prefill(backend, ids, mask)
    tokens, seen = [], []
    for i in range(steps):
        seen.append(logits[0].astype(np.float64))
        tokens.append(int(logits[0].argmax()) if forced is None else forced[i])
        if i + 1 < steps:
            mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
            logits, state = backend.step("decode", np.array([[tokens[-1]]], dtype=np.int64), mask, state)
    return tokens, np.stack(seen)


def compare(reference, candidate, prompt: list[int], steps: int = 64) -> Agreement:
    """`candidate`'s logits against `reference`'s over `steps` positions after `prompt` (both backends)."""
    tokens, ref = run(reference, prompt, steps)
    _, got = run(candidate, prompt, steps, forced=tokens)
    mine, _ = run(candidate, prompt, steps)
    prefix = next((i for i, (a, b) in enumerate(zip(tokens, mine)) if a != b), steps)
    diff = got - ref
    return Agreement(
        top1=float((got.argmax(-1) == ref.argmax(-1)).mean()),
        greedy_prefix=prefix,
        max_abs_error=float(np.abs(diff).max()),
        relative_error=float(np.sqrt((diff**2).mean() / (ref**2).mean())),
        positions=steps,
    )
