"""Decode and prefill speed of another revision's artifacts against this tree's, on the benchmark model,
side by side in one run (each revision exports with its own exporter and runs with its own runtime).

    python benchmarks/bench_decode_revisions.py --baseline-rev REV [--precisions int4,int8,float32]
                                                [--threads 2] [--rounds 3] [--prompt-len 128] [--workdir DIR] [--out FILE]

Per precision: one random checkpoint of the benchmark model (benchmarks/bench_vs_transformers.py's
CONFIG), exported by both revisions; the same greedy tokens checked; then `nemotron-deploy bench`
(--prompt-len, 64 new tokens) alternated between the two `--rounds` times; the best round of each is
reported (this machine is shared and noisy) with the ratio, and each revision's peak anonymous memory (the lowest round).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from baseline import baseline_env
from bench_vs_transformers import CONFIG, cli, cpu_name

from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

QUANTIZE = {"float32": (), "int8": ("--quantize", "int8"), "int4": ("--quantize", "int4")}
TOKENS = ("--prompt-ids", "5,6,7,8,9,10,11,12", "--max-new-tokens", "16", "--ignore-eos", "--json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-rev", required=True)
    ap.add_argument("--precisions", default="int4,int8,float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/results/decode_revisions_cpu.md")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-revisions-", dir=args.workdir) as tmp:
        work = Path(tmp)
        envs = {"before": baseline_env(work, args.baseline_rev), "after": None}
        ckpt = write_random_checkpoint(work / "ckpt", config=CONFIG)
        for precision in args.precisions.split(","):
            arts = {}
            for label, env in envs.items():
                arts[label] = work / f"{label}-{precision}"
                cli("export", ckpt, "-o", arts[label], *QUANTIZE[precision], env=env)
            tokens = {
                label: json.loads(cli("generate", arts[label], *TOKENS, env=env).strip().splitlines()[-1])["new_token_ids"]
                for label, env in envs.items()
            }
            runs = {label: [] for label in envs}
            for _ in range(args.rounds):
                for label, env in envs.items():
                    out = cli(
                        "bench",
                        arts[label],
                        "--prompt-len",
                        args.prompt_len,
                        "--new-tokens",
                        64,
                        "--threads",
                        args.threads,
                        "--json",
                        env=env,
                    )
                    runs[label].append(json.loads(out.strip().splitlines()[-1]))
            best = {
                label: {k: max(r[k] for r in rs) for k in ("decode_tokens_per_s", "prefill_tokens_per_s")}
                | {"peak_anon_mb": min(r["peak_anon_mb"] for r in rs)}
                for label, rs in runs.items()
            }
            rows.append({"precision": precision, "same_tokens": tokens["before"] == tokens["after"], "best": best, "runs": runs})
            print(json.dumps(rows[-1]["best"] | {"precision": precision}), flush=True)
            for path in arts.values():
                shutil.rmtree(path)
    Path(args.out).write_text(render(rows, args))
    print(Path(args.out).read_text())


def render(rows: list[dict], args) -> str:
    lines = [
        f"# Decode and prefill, revision {args.baseline_rev} against this tree, onnxruntime CPU ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu_name()}, no GPU, {args.threads} threads. `python benchmarks/bench_decode_revisions.py --baseline-rev "
        f"{args.baseline_rev}`: one run; the benchmark model ({CONFIG['hybrid_override_pattern']}, 537 M parameters) exported by each "
        f"revision; `bench` (prompt {args.prompt_len}, 64 new tokens) alternated {args.rounds} times, best round of each.",
        "",
        "| precision | same greedy tokens | decode tok/s before | after | ratio | prefill tok/s before | after | ratio | peak anon MiB before | after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b, a = r["best"]["before"], r["best"]["after"]
        lines.append(
            f"| {r['precision']} | {'yes' if r['same_tokens'] else 'no'} | {b['decode_tokens_per_s']:.1f} | {a['decode_tokens_per_s']:.1f} | "
            f"{a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f} | {b['prefill_tokens_per_s']:.0f} | {a['prefill_tokens_per_s']:.0f} | "
            f"{a['prefill_tokens_per_s'] / b['prefill_tokens_per_s']:.2f} | {b['peak_anon_mb']:.0f} | {a['peak_anon_mb']:.0f} |"
        )
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
