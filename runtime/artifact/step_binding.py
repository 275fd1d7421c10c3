"""A step graph's tensors by role, as the manifest names them: what every backend feeds and fetches."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE, ArtifactError, Manifest, StateRecord


@dataclass(frozen=True)
class StepBinding:
    input_ids: str
    attention_mask: str
    logits: str
    states: tuple[StateRecord, ...]

    @classmethod
    def of(cls, manifest: Manifest, graph: str = "prefill") -> "StepBinding":
        record = manifest.graph(graph)
        by_role = {t.role: t.name for t in record.inputs + record.outputs if t.layer is None}
        missing = [role for role in ("input_ids", "attention_mask", "logits") if role not in by_role]
        if missing:
            raise ArtifactError(f"{manifest.path / MANIFEST_FILE}: graphs.{graph} has no tensor of role '{missing[0]}'")
        return cls(by_role["input_ids"], by_role["attention_mask"], by_role["logits"], manifest.states)

    @functools.cached_property  # read on every step (the decode hot path): built once
    def outputs(self) -> list[str]:
        """Output names in the order `unpack` takes them: logits, then every present state."""
        return [self.logits] + [s.present for s in self.states]

    def feeds(self, input_ids, attention_mask, state: dict) -> dict:
        """input_ids (B, T) int64, attention_mask (B, past+T) int64, state: past.* name -> tensor."""
        return {self.input_ids: input_ids, self.attention_mask: attention_mask, **state}

    def unpack(self, results: list) -> tuple:
        """Outputs in `outputs` order -> last-position logits (B, V) and the next state (past.* names)."""
        logits, *presents = results
        return logits[:, -1], {s.name: present for s, present in zip(self.states, presents)}
