"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling with a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nemotron_deploy.runtime.errors import NemotronDeployError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen.

    greedy: None (default) means argmax unless a sampling parameter is given (temperature != 1,
    top_k != 0 or top_p != 1), as on the command line; True forces argmax (the rest is ignored);
    False samples, at temperature 1 with no filter if nothing else is set. top_k=0 and top_p=1.0
    disable those filters. seed makes sampling repeatable.
    """

    greedy: bool | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

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


class Sampler:
    def __init__(self, config: Sampling):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits: (B, V) float32 -> token ids (B,) int64."""
        if self.config.greedy:
            return logits.argmax(-1).astype(np.int64)
        probs = filtered_probabilities(logits, self.config)
        cumulative = probs.cumsum(-1)
        draws = self.rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
        return np.minimum((cumulative < draws).sum(-1), probs.shape[-1] - 1).astype(np.int64)


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
