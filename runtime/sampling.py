"""Next-token choice from logits: penalties for tokens already seen (repetition, presence, frequency),
then greedy, or temperature / top-k / top-p sampling with a seeded generator.

The order is transformers' (its logits processors, then its warpers) and vLLM's: penalties change the
logits, then temperature and the filters shape what is drawn from; greedy takes the penalized argmax.
The C++ runtime's sampler computes the same (runtime/cpp/).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen.

    greedy: None (default) means argmax unless a sampling parameter is given (temperature != 1,
    top_k != 0 or top_p != 1), as on the command line; True forces argmax (the rest is ignored);
    False samples, at temperature 1 with no filter if nothing else is set. top_k=0 and top_p=1.0
    disable those filters. seed makes sampling repeatable.

    Penalties (off at their defaults; they apply to greedy decoding too):
    repetition_penalty: transformers' `RepetitionPenaltyLogitsProcessor`: the logit of every token in the
        prompt or the output so far is divided by it (multiplied where negative); > 0, 1 is off.
    presence_penalty, frequency_penalty: the OpenAI API's: a token's logit goes down by
        frequency_penalty x (times it was generated) + presence_penalty x (1 if it was); counted over the
        generated tokens only, as the OpenAI API and vLLM do; each in [-2, 2], 0 is off.
    """

    greedy: bool | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.greedy is None:
            object.__setattr__(self, "greedy", self.temperature == 1.0 and self.top_k == 0 and self.top_p == 1.0)
        if not self.greedy:
            if not self.temperature > 0:
                raise NemotronDeployError(f"temperature {self.temperature}: expected a number > 0 (greedy decoding is argmax)")
            if self.top_k < 0:
                raise NemotronDeployError(f"top_k {self.top_k}: expected >= 0 (0 disables it)")
            if not 0 < self.top_p <= 1:
                raise NemotronDeployError(f"top_p {self.top_p}: expected a number in (0, 1]")
        if not self.repetition_penalty > 0:
            raise NemotronDeployError(f"repetition_penalty {self.repetition_penalty}: expected a number > 0 (1 disables it)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise NemotronDeployError(f"{name} {getattr(self, name)}: expected a number in [-2, 2] (0 disables it)")

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


class Sampler:
    def __init__(self, config: Sampling):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(
        self, logits: np.ndarray, prompts: Sequence[Sequence[int]] | None = None, outputs: Sequence[Sequence[int]] | None = None
    ) -> np.ndarray:
        """logits: (B, V) float32 -> token ids (B,) int64. prompts / outputs: each row's prompt and the
        tokens generated so far (what the penalties count; needed only when the config has some)."""
        if self.config.penalized:
            if prompts is None or outputs is None:
                raise ValueError("penalties need each row's prompt and output tokens")
            logits = penalize(logits, self.config, prompts, outputs)
        if self.config.greedy:
            return logits.argmax(-1).astype(np.int64)
        probs = filtered_probabilities(logits, self.config)
        cumulative = probs.cumsum(-1)
        draws = self.rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
        return np.minimum((cumulative < draws).sum(-1), probs.shape[-1] - 1).astype(np.int64)


def penalize(logits: np.ndarray, c: Sampling, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> np.ndarray:
    """(B, V) float32 logits -> a penalized copy (float32, as transformers computes it): repetition over
    each row's prompt and output tokens, then presence and frequency over its output tokens."""
    scores = np.array(logits, dtype=np.float32)
    for row, (prompt, output) in enumerate(zip(prompts, outputs)):
        if c.repetition_penalty != 1.0:
            seen = np.unique(np.asarray([*prompt, *output], dtype=np.int64))
            s = scores[row, seen]
            scores[row, seen] = np.where(s < 0, s * np.float32(c.repetition_penalty), s / np.float32(c.repetition_penalty))
        if (c.presence_penalty or c.frequency_penalty) and len(output):
            ids, counts = np.unique(np.asarray(output, dtype=np.int64), return_counts=True)
            scores[row, ids] -= (np.float32(c.frequency_penalty) * counts + np.float32(c.presence_penalty)).astype(np.float32)
    return scores


def filtered_probabilities(logits: np.ndarray, c: Sampling) -> np.ndarray:
    """What sampling draws from, (B, V) float64: softmax(logits / temperature), top-k (ties at the k-th
    value kept), then top-p. The C++ runtime's sampler computes the same (tests/cpp/)."""
    scores = logits.astype(np.float64) / c.temperature
    if c.top_k and c.top_k < scores.shape[-1]:
        kth = np.partition(scores, -c.top_k, axis=-1)[:, -c.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return _top_p(probs, c.top_p) if c.top_p < 1.0 else probs


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (at least one), renormalised."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, -1)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(-1, keepdims=True)
