"""Accuracy of a trained checkpoint's artifacts (float32, float16, int8, int4) on held-out text, against
transformers eager on the same checkpoint, in one run.

    python benchmarks/quant_accuracy.py CHECKPOINT [--windows 8] [--length 256] [--block-sizes 32,64,128] [--workdir DIR]
                                        [--out benchmarks/results/accuracy_trained.md]

CHECKPOINT is one `benchmarks/train_reference.py` wrote (its held-out windows come from the same split).
Each artifact runs teacher-forced on every window (runtime/accuracy.py: one prompt token, then each
next held-out token fed as a decode step), so every position is scored: held-out perplexity (of the
held-out tokens), top-1 agreement with transformers' next-token choice at each position (a full
forward, eager attention, the per-expert loop), and with the float32 artifact's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_reference import heldout_windows

SCHEMES = {"float32": (), "float16": ("--dtype", "float16"), "int8": ("--quantize", "int8"), "int4": ("--quantize", "int4")}


def with_block_sizes(block_sizes: list[int]) -> dict:
    """SCHEMES plus int8 and int4 at each other block size ("int4 block 128"); int8 / int4 are block 32."""
    extra = {f"{q} block {b}": ("--quantize", q, "--block-size", str(b)) for b in block_sizes if b != 32 for q in ("int8", "int4")}
    return SCHEMES | extra


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def transformers_logits(checkpoint: Path, windows: list[list[int]]) -> list[np.ndarray]:
    """Per window, transformers' logits (T-1, V) float64 before each of its tokens after the first."""
    import torch
    from transformers import AutoConfig, NemotronHForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = NemotronHForCausalLM.from_pretrained(checkpoint, config=config).eval()
    with torch.no_grad():
        return [model(torch.tensor([w]), use_cache=False).logits[0, :-1].double().numpy() for w in windows]


def artifact_logits(artifact: Path, windows: list[list[int]]) -> list[np.ndarray]:
    """The same, teacher-forced through the artifact's decode steps (onnxruntime, CPU)."""
    from nemotron_deploy.runtime.accuracy import run
    from nemotron_deploy.runtime.session import Session

    backend = Session(artifact).backend
    return [run(backend, w[:1], len(w) - 1, forced=w[1:])[1] for w in windows]


def score(logits: list[np.ndarray], windows: list[list[int]], reference: list[np.ndarray], float32: list[np.ndarray] | None) -> dict:
    nll = np.concatenate([-_log_softmax(lg)[np.arange(len(w) - 1), w[1:]] for lg, w in zip(logits, windows)])
    picks = np.concatenate([lg.argmax(-1) for lg in logits])
    row = {
        "perplexity": math.exp(float(nll.mean())),
        "top1_vs_transformers": float((picks == np.concatenate([r.argmax(-1) for r in reference])).mean()),
    }
    if float32 is not None:
        row["top1_vs_float32"] = float((picks == np.concatenate([f.argmax(-1) for f in float32])).mean())
    return row


def measure(checkpoint: Path, workdir: Path, windows: list[list[int]], schemes=tuple(SCHEMES), arguments: dict = SCHEMES) -> dict:
    """{'transformers': {...}, scheme: {...}}: perplexity and top-1 agreement per scheme (its export
    arguments in `arguments`)."""
    reference = transformers_logits(checkpoint, windows)
    results = {"transformers": score(reference, windows, reference, None)}
    float32 = None
    for scheme in schemes:
        artifact = workdir / f"artifact-{scheme.replace(' ', '-')}"
        done = subprocess.run(
            [sys.executable, "-m", "nemotron_deploy.runtime.cli", "export", str(checkpoint), "-o", str(artifact), *arguments[scheme]],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"export {scheme} failed:\n{done.stderr[-2000:]}")
        logits = artifact_logits(artifact, windows)
        if scheme == "float32":
            float32 = logits
        results[scheme] = score(logits, windows, reference, float32)
        results[scheme]["weights_mib"] = (artifact / "weights.data").stat().st_size / 2**20
        shutil.rmtree(artifact)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--block-sizes", default="32", help="comma-separated: int8 and int4 rows at each (32 is the default block)")
    ap.add_argument("--out", default="benchmarks/results/accuracy_trained.md")
    args = ap.parse_args()
    if not (args.checkpoint / "reference.json").is_file():
        raise SystemExit(f"{args.checkpoint}: no reference.json; expected a checkpoint benchmarks/train_reference.py wrote")
    windows = heldout_windows(args.checkpoint, args.windows, args.length)
    with tempfile.TemporaryDirectory(prefix="quant-accuracy-", dir=args.workdir) as tmp:
        schemes = with_block_sizes([int(b) for b in args.block_sizes.split(",")])
        results = measure(args.checkpoint, Path(tmp), windows, tuple(schemes), schemes)
    info = json.loads((args.checkpoint / "reference.json").read_text())
    Path(args.out).write_text(render(results, info, args))
    print(Path(args.out).read_text())


def render(results: dict, info: dict, args) -> str:
    from bench_vs_transformers import cpu_name

    lines = [
        f"# Accuracy on trained weights, onnxruntime CPU ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu_name()}. Checkpoint: `benchmarks/train_reference.py --size {info['size']}` ({info['parameters'] / 1e6:.1f} M "
        f"parameters, every layer kind, 32 experts top-4; {info['steps']} steps in {info['seconds'] / 60:.0f} min on this machine; "
        f"transformers' held-out loss {info['heldout_loss']:.3f}). `python benchmarks/quant_accuracy.py`: {args.windows} held-out windows "
        f"of {args.length} tokens (Python standard library files the model never saw), teacher-forced, every position scored "
        f"({args.windows * (args.length - 1)} positions); int8/int4: block 32 unless named, symmetric RTN (docs/quantization.md).",
        "",
        "| weights | weights.data MiB | held-out perplexity | x transformers | top-1 = transformers | top-1 = float32 artifact |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = results["transformers"]["perplexity"]
    for name, r in results.items():
        size = f"{r['weights_mib']:.1f}" if "weights_mib" in r else ""
        vs32 = f"{100 * r['top1_vs_float32']:.1f} %" if "top1_vs_float32" in r else ""
        lines.append(
            f"| {name} | {size} | {r['perplexity']:.3f} | {r['perplexity'] / base:.4f} | {100 * r['top1_vs_transformers']:.1f} % | {vs32} |"
        )
    lines += ["", "```json", json.dumps({"reference": info, "results": results}, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
