"""Export at scale: graphs that do not grow with the expert count, memory that does not grow with the weights.

Each export runs in a fresh child process (`export_profile`) that samples its own anonymous memory
(RssAnon), so the figures are the export's alone, not pytest's.
"""

import sys
from pathlib import Path

import pytest

from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from export_profile import profile_export
from helpers import SMALL_WIDTHS

# Mamba, MoE and attention layers; small widths so the graphs trace quickly.
BASE = dict(TINY_CONFIG, hybrid_override_pattern="ME*", **SMALL_WIDTHS)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> export measurements; checkpoints stored in bfloat16 as hub checkpoints are."""
    root = tmp_path_factory.mktemp("scaling")
    variants = {
        "8 experts": dict(n_routed_experts=8),
        "64 experts": dict(n_routed_experts=64),
        # same graph as "64 experts", 256x the expert bytes: 64 experts x 2 x 1024 x 1024 -> 512 MiB in float32
        "64 wide experts": dict(n_routed_experts=64, hidden_size=1024, moe_intermediate_size=1024, head_dim=512),
    }
    results = {}
    for name, change in variants.items():
        ckpt = write_random_checkpoint(root / name.replace(" ", "-"), config=dict(BASE, **change), dtype="bfloat16", shard_bytes=64 * 2**20)
        results[name] = profile_export(ckpt, root / f"{name.replace(' ', '-')}-onnx")
    return results


def test_graph_size_does_not_grow_with_the_expert_count(exports):
    assert exports["8 experts"]["nodes"] == exports["64 experts"]["nodes"]
    # other widths: common-subexpression elimination merges shape constants that happen to be equal at
    # one width and not at another (hidden 32 vs 1024: two Constant + Concat pairs), nothing per expert
    for graph, nodes in exports["64 wide experts"]["nodes"].items():
        assert abs(nodes - exports["64 experts"]["nodes"][graph]) <= 0.02 * nodes


def test_export_memory_does_not_grow_with_the_weights(exports):
    small, wide = exports["64 experts"], exports["64 wide experts"]
    weights_mb = wide["weights_mb"] - small["weights_mb"]
    assert weights_mb > 500  # float32 experts (up stored twice for onnxruntime's MoE node): ~768 MiB
    grown = wide["peak_anon_mb"] - small["peak_anon_mb"]
    print(
        f"weights +{weights_mb:.0f} MiB -> peak anonymous memory +{grown:.0f} MiB, peak RSS +{wide['peak_rss_mb'] - small['peak_rss_mb']:.0f} MiB"
    )
    # Streaming holds a few blocks (one expert: 4 MiB here); holding the weights would cost >= weights_mb.
    assert grown < 0.25 * weights_mb
