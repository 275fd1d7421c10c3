"""Fixtures of the pre-packed cache's build tests (test_repeated_rows.py, test_prepack_parts.py)."""

from __future__ import annotations

import pytest

from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint

# MoE-heavy on purpose: two MoE layers of 32 experts of width 1024, whose `up` (int4 and scales, 2 x 20
# MiB once repeated) is most of what a build folds and packs; the rest of the model is small.
MOE_HEAVY = dict(
    TINY_CONFIG,
    vocab_size=256,
    hidden_size=512,
    hybrid_override_pattern="MEE",
    mamba_num_heads=8,
    mamba_head_dim=32,
    n_groups=2,
    ssm_state_size=32,
    n_routed_experts=32,
    num_experts_per_tok=4,
    moe_intermediate_size=1024,
    moe_shared_expert_intermediate_size=256,
    n_group=1,
    topk_group=1,
)


@pytest.fixture(scope="session")
def moe_int4(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-heavy")
    ckpt = write_random_checkpoint(root / "ckpt", config=MOE_HEAVY, dtype="bfloat16")
    return export_artifact(ckpt, root / "int4", progress=False, quantize="int4")
