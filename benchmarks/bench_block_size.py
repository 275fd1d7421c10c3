"""What `--block-size` trades on the CPU: decode and prefill speed, file size and memory of int8 and int4
artifacts at several block sizes, side by side in one run (the accuracy side: quant_accuracy.py
--block-sizes on a trained checkpoint).

    python benchmarks/bench_block_size.py [--block-sizes 32,64,128] [--precisions int4,int8] [--threads 2]
                                          [--rounds 3] [--workdir DIR] [--out benchmarks/results/block_size_cpu.md]

One random checkpoint of the benchmark model (bench_vs_transformers.py's CONFIG), exported once per
precision and block size; each artifact opened once first (its pre-packed cache built, then reused);
then `nemotron-deploy bench` (prompt 128, 64 new tokens) alternated over every artifact `--rounds` times.
Speed: the best round of each (this machine is shared and noisy). Memory: the peaks of that round's
process (PSS counts the mapped cache and weights once).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_memory import _cache_bytes
from bench_vs_transformers import CONFIG, cli, cpu_name

from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

TOKENS = ("--prompt-ids", "5,6,7,8,9,10,11,12", "--max-new-tokens", "8", "--ignore-eos", "--json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-sizes", default="32,64,128")
    ap.add_argument("--precisions", default="int4,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/results/block_size_cpu.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-block-size-", dir=args.workdir) as tmp:
        work = Path(tmp)
        ckpt = write_random_checkpoint(work / "ckpt", config=CONFIG)
        arts = {}
        for precision in args.precisions.split(","):
            for block in map(int, args.block_sizes.split(",")):
                path = arts[precision, block] = work / f"{precision}-{block}"
                cli("export", ckpt, "-o", path, "--quantize", precision, "--block-size", block)
                cli("generate", path, *TOKENS)  # the first open builds the pre-packed cache
        runs = {key: [] for key in arts}
        for _ in range(args.rounds):
            for key, path in arts.items():
                out = cli("bench", path, "--prompt-len", 128, "--new-tokens", 64, "--threads", args.threads, "--json")
                runs[key].append(json.loads(out.strip().splitlines()[-1]))
        rows = []
        for (precision, block), path in arts.items():
            best = max(runs[precision, block], key=lambda r: r["decode_tokens_per_s"])
            rows.append(
                {
                    **best,
                    "precision": precision,
                    "block_size": block,
                    "prefill_tokens_per_s": max(r["prefill_tokens_per_s"] for r in runs[precision, block]),
                    "cache_mb": _cache_bytes(path) / 2**20,
                    "parameters": json.loads((path / "manifest.json").read_text())["model"]["num_parameters"],
                }
            )
    Path(args.out).write_text(render(rows, args))
    print(Path(args.out).read_text())


def render(rows: list[dict], args) -> str:
    lines = [
        f"# `--block-size` on the CPU: speed, size, memory ({datetime.date.today()})",
        "",
        f"Machine: {cpu_name()}, no GPU, {args.threads} threads. `python benchmarks/bench_block_size.py`: one run; the benchmark model "
        f"({CONFIG['hybrid_override_pattern']}, 537 M parameters, random weights); `bench` (prompt 128, 64 new tokens) alternated over "
        f"every artifact {args.rounds} times, the best round of each; 'x 32' is the ratio to the same precision at block 32.",
        "",
        "| precision | block | weights.data MiB | bytes/param | pre-packed cache MiB | decode tok/s | x 32 | prefill tok/s | x 32 | peak PSS MiB | peak anon MiB | peak RSS MiB |",
        "| --- " * 12 + "|",
    ]
    for r in rows:
        base = (
            next(b for b in rows if b["precision"] == r["precision"] and b["block_size"] == 32)
            if any(b["block_size"] == 32 for b in rows)
            else r
        )
        lines.append(
            f"| {r['precision']} | {r['block_size']} | {r['weights_mb']:.0f} | {r['weights_mb'] * 2**20 / r['parameters']:.2f} | {r['cache_mb']:.0f} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f} | {r['prefill_tokens_per_s']:.0f} | "
            f"{r['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f} | {r.get('peak_pss_mb', 0):.0f} | {r.get('peak_anon_mb', 0):.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
