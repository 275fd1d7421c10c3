"""Quantization accuracy on trained weights: a small NemotronH (every layer kind, 32 experts top-4)
trained here by benchmarks/train_reference.py on the Python standard library's sources, scored on files
it never saw against transformers eager on the same checkpoint (benchmarks/quant_accuracy.py). The
bounds are docs/quantization.md's; the larger model's figures are in benchmarks/results/accuracy_trained.md."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from quant_accuracy import measure
from train_reference import SIZES, heldout_windows, train

STEPS = 1000  # the tiny size in under a minute on 2 cores


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "checkpoint"
    info = train(out, "tiny", steps=STEPS, log=lambda m: None)
    return out, info


def test_the_reference_learned_something(trained):
    _, info = trained
    # untrained: ~512 (the vocabulary); measured here after 1000 steps: 23
    assert info["steps"] == STEPS and info["heldout_perplexity"] < 40, info


def test_int8_and_int4_stay_close_to_float32_on_held_out_text(trained, tmp_path):
    checkpoint, _ = trained
    windows = heldout_windows(checkpoint, 4, SIZES["tiny"]["seq_len"])
    r = measure(checkpoint, tmp_path, windows, schemes=("float32", "int8", "int4"))
    print(json.dumps(r, indent=1))
    base = r["transformers"]["perplexity"]
    assert abs(r["float32"]["perplexity"] / base - 1) < 1e-3 and r["float32"]["top1_vs_transformers"] >= 0.99
    assert r["int8"]["perplexity"] / base < 1.01 and r["int8"]["top1_vs_float32"] >= 0.95
    assert r["int4"]["perplexity"] / base < 1.03 and r["int4"]["top1_vs_float32"] >= 0.80
