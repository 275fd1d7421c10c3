"""What `export --kv-in-place` gives a CPU decode step: the same checkpoint exported with attention as
Concat (a new K/V per step) and as GroupQueryAttention appending to one buffer, decode steps after
pasts of several lengths, side by side in one run.

    python benchmarks/bench_kv_in_place.py [--pasts 128,4096,16384,32768] [--precisions int4,float32]
                                           [--models bench,h4b_attention,nano30b_attention] [--threads 2] [--rounds 3] [--steps 16]
                                           [--prefill 4096,16384]
                                           [--workdir DIR] [--out benchmarks/results/kv_in_place_cpu.md]

Models, each the benchmark model (bench_vs_transformers.py's CONFIG) but for its attention:
- `bench`: as it is, 2 of 14 layers attention, 16 query heads over 2 K/V heads x 64 (8 query heads per
  K/V head);
- `h4b_attention`: Nemotron-H-4B's attention widths and share, 32 query heads over 8 K/V heads x 128,
  4 of 14 layers (32 KiB of K/V per token, as Nemotron-H-4B's 4 layers hold; 4 query heads per K/V head);
- `nano30b_attention`: Nemotron-3-Nano-30B-A3B's attention widths, 32 query heads over 2 K/V heads x 128,
  2 of 14 layers (16 query heads per K/V head);
- `h4b`: Nemotron-H-4B itself (bench_export.py's H4B, random weights: a 17 GB checkpoint; not in the
  default list).
onnxruntime's GroupQueryAttention CPU kernel computes each query head alone, reading its K/V head once
per query head; the Concat graph reads each K/V head once per step but copies it: which wins depends on
the query heads per K/V head and the past.
Each artifact runs in this process on onnxruntime (its pre-packed cache built on the first open).
A step's time does not depend on the K/V values, so each past is a random K/V of that length (batch
1, zero Mamba states), not a prefill: what a decode step costs at that past, without a 32k-token
prefill per point. Per past, `--rounds` rounds alternate the artifacts; a round times `--steps` decode
steps after one untimed step (which makes the in-place artifact's buffer). Reported: the best round's
median step (this machine is shared and noisy), and in-place / concat speed. `--prefill`: also the time
to prefill one prompt of each length from empty (the runtime's pieces: time to first token).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_export import H4B
from bench_vs_transformers import CONFIG, cli, cpu_name

from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint
from nemotron_deploy.runtime.decode import prefill
from nemotron_deploy.runtime.session import Session

MODELS = {
    "bench": dict(CONFIG, max_position_embeddings=65536),
    "h4b_attention": dict(
        CONFIG,
        hybrid_override_pattern="M*EM*EM*EM*EME",
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=65536,
    ),
    "nano30b_attention": dict(CONFIG, num_attention_heads=32, num_key_value_heads=2, head_dim=128, max_position_embeddings=65536),
    "h4b": dict(H4B, max_position_embeddings=65536),  # the real model's shape, random weights (17 GB of float32)
}
PRECISIONS = {"float32": [], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4"]}


def state_at(backend, past: int, rng) -> dict:
    """Zero Mamba states and a random K/V of `past` positions, batch 1."""
    state = backend.initial_state(1)
    for record in backend.manifest.states:
        if record.grows:
            shape = list(state[record.name].shape)
            shape[2] = past
            state[record.name] = rng.standard_normal(shape, dtype=np.float32)
    return state


def round_ms(backend, past: int, steps: int, rng) -> float:
    """Median ms of `steps` decode steps after `past` positions (one untimed step first)."""
    state = state_at(backend, past, rng)
    token = np.array([[5]], dtype=np.int64)
    times = []
    for i in range(steps + 1):
        mask = np.ones((1, past + i + 1), dtype=np.int64)
        start = time.perf_counter()
        _, state = backend.step("decode", token, mask, state)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def prefill_s(backend, tokens: int, rng) -> float:
    """Seconds to prefill one `tokens`-token prompt from empty, in the runtime's own pieces."""
    ids = rng.integers(3, 1000, size=(1, tokens))
    start = time.perf_counter()
    prefill(backend, ids, np.ones_like(ids))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pasts", default="128,4096,16384,32768")
    ap.add_argument("--precisions", default="int4,float32")
    ap.add_argument("--models", default="bench,h4b_attention,nano30b_attention")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prefill", default="", help="also prefill prompts of these lengths from empty (e.g. 4096,16384)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/results/kv_in_place_cpu.md")
    args = ap.parse_args()
    pasts = [int(p) for p in args.pasts.split(",") if p]
    prompts = [int(p) for p in args.prefill.split(",") if p]
    rng = np.random.default_rng(0)
    rows, prefill_rows = [], []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-kv-in-place-", dir=args.workdir) as tmp:
            work = Path(tmp)
            ckpt = write_random_checkpoint(work / "ckpt", config=MODELS[model], shard_bytes=2 << 30)
            for precision in args.precisions.split(","):
                backends = {}
                for form, flag in (("concat", []), ("in_place", ["--kv-in-place"])):
                    path = work / f"{precision}-{form}"
                    cli("export", ckpt, "-o", path, *PRECISIONS[precision], *flag)
                    backends[form] = Session(path, threads=args.threads).backend
                for past in pasts:
                    best = dict.fromkeys(backends, float("inf"))
                    for _ in range(args.rounds):
                        for form, backend in backends.items():
                            best[form] = min(best[form], round_ms(backend, past, args.steps, rng))
                    rows.append((model, precision, past, best["concat"], best["in_place"]))
                    print(
                        f"{model} {precision} past {past}: concat {best['concat']:.2f} ms, in place {best['in_place']:.2f} ms", flush=True
                    )
                for tokens in prompts:
                    best = dict.fromkeys(backends, float("inf"))
                    for _ in range(args.rounds):
                        for form, backend in backends.items():
                            best[form] = min(best[form], prefill_s(backend, tokens, rng))
                    prefill_rows.append((model, precision, tokens, best["concat"], best["in_place"]))
                    print(
                        f"{model} {precision} prefill {tokens}: concat {best['concat']:.2f} s, in place {best['in_place']:.2f} s",
                        flush=True,
                    )
                del backends
    write(args, rows, prefill_rows)


def write(args, rows, prefill_rows) -> None:
    unset = "''"
    lines = [
        f"# K/V appended in place against Concat ({datetime.date.today()})",
        "",
        f"Machine: {cpu_name()}, {args.threads} onnxruntime threads. `python benchmarks/bench_kv_in_place.py "
        f"--pasts {args.pasts or unset} --prefill {args.prefill or unset} --precisions {args.precisions} --models {args.models} "
        f"--rounds {args.rounds} --steps {args.steps}`. Batch 1; models: see the script's docstring.",
    ]
    if rows:
        lines += [
            "",
            "Decode step after a past: best of the alternated rounds' median step.",
            "",
            "| model | precision | past | concat ms/step | in place ms/step | in place speed |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {m} | {p} | {past} | {c:.2f} | {i:.2f} | {c / i:.2f}x |" for m, p, past, c, i in rows]
    if prefill_rows:
        lines += [
            "",
            "Prefill of one prompt from empty, in the runtime's own pieces: best of the alternated rounds.",
            "",
            "| model | precision | prompt tokens | concat s | in place s | in place speed |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {m} | {p} | {n} | {c:.2f} | {i:.2f} | {c / i:.2f}x |" for m, p, n, c, i in prefill_rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
