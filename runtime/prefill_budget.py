"""How many prompt tokens one prefill call takes, so that its activations stay a small share of memory.

A step's activations grow with its new tokens T: linearly (the projections' outputs, the experts'
rows) and, in attention, with T x (past + T): the scores are materialised, about three float32
(batch, heads, T, past + T) buffers at once (scores, masked, softmax): 3 GiB for a 4000-token prompt
of the benchmark model in one call. The budget is max(32 MiB, weights / 20), since a model that
stores more weights has the memory for more activations and re-reads its weights once per call (so
gains more from long calls). Pieces of a long prompt also prefill faster than one call
(docs/export.md). An explicit `--prefill-chunk` overrides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE, WEIGHTS_FILE, ArtifactError, Manifest

MIN_BUDGET_BYTES = 32 * 2**20
WEIGHTS_SHARE = 1 / 20
MIN_TOKENS = 16  # every call makes progress
# onnxruntime holds about 3x the widest layer's float32 row per new token at once (inputs, outputs and
# scratch of the fused ops; measured on the benchmark model, one piece at past 0: 0.20 MiB per token at
# int4, 0.33 at float32, against 68 KB counted by `token_bytes`'s widths)
LIVE_ROWS = 3


@dataclass(frozen=True)
class PrefillBudget:
    budget_bytes: float
    token_bytes: int  # float32 activations one new token holds at the widest point of a layer
    score_bytes: int  # attention scratch per (query, key) pair of one sequence: 3 buffers x heads x 4 B

    @classmethod
    def of(cls, manifest: Manifest) -> "PrefillBudget":
        kinds = set(manifest.model.layer_types)

        def size(key: str) -> int:
            value = manifest.model.config.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ArtifactError(
                    f"{manifest.path / MANIFEST_FILE}: field 'model.config.{key}' is {value!r}, expected a size (an integer >= 0)"
                )
            return value

        weights = next((f.bytes for f in manifest.files if f.name == WEIGHTS_FILE), 0)
        e = size("hidden_size")
        widths = [0]
        if "mamba" in kinds:  # in_proj's output, then the scan's key (B per head) and value
            heads, p, g, n = size("mamba_num_heads"), size("mamba_head_dim"), size("n_groups"), size("ssm_state_size")
            widths.append(2 * heads * p + 2 * g * n + heads + heads * n + heads * p)
        if "moe" in kinds:  # each token's k routed rows (up stored twice: the MoE node's layout) and outputs
            widths.append(
                size("num_experts_per_tok") * (2 * size("moe_intermediate_size") + e) + size("moe_shared_expert_intermediate_size")
            )
        if "mlp" in kinds:
            widths.append(size("intermediate_size"))
        if "attention" in kinds:
            widths.append((size("num_attention_heads") + 2 * size("num_key_value_heads")) * size("head_dim"))
        heads = size("num_attention_heads") if "attention" in kinds else 0
        return cls(max(MIN_BUDGET_BYTES, weights * WEIGHTS_SHARE), LIVE_ROWS * 4 * (4 * e + max(widths)), 3 * 4 * heads)

    def tokens(self, batch: int, past_len: int) -> int:
        """The most new tokens per sequence for one call of `batch` sequences after `past_len` tokens."""
        linear = self.budget_bytes / (batch * self.token_bytes)
        if self.score_bytes:  # T * (past_len + T) <= c
            c = self.budget_bytes / (batch * self.score_bytes)
            linear = min(linear, (math.sqrt(past_len * past_len + 4 * c) - past_len) / 2)
        return max(MIN_TOKENS, int(linear))
