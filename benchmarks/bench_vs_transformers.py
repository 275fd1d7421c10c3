"""Side by side, one run: our onnxruntime CPU artifacts (before this tree, float32, int8, int4) vs
transformers eager, on one checkpoint, with 1 and 2 threads, and decode against the bandwidth floor.

Makes a random NemotronH checkpoint of a few hundred million parameters with Nemotron-3-Nano-30B-A3B's
ratio of layer kinds (mamba : moe : attention ~ 4 : 4 : 1, 64 experts, top-6), exports it with a
baseline revision (`--baseline-precisions`, default float32) and with this tree (float32, float16, --quantize int8, --quantize int4), then runs
`nemotron-deploy bench` on each in a fresh child process (prefill at the prompt length; decode after
the prompt and after each --past length; batch 4 and 8 decode), and transformers 5.23 eager in this
process. 'before' is the baseline revision's export run by this tree's runtime and `bench` (the same
measurement for every row). Writes a Markdown table with the raw JSON and a PNG plot of decode tokens/s against past length.
Needs the `bench` extra (matplotlib) besides `export`, `onnxruntime` and `test` (transformers).

Usage: python benchmarks/bench_vs_transformers.py [--baseline-rev REV] [--baseline-precisions float32,int4]
                                                  [--workdir DIR] [--out benchmarks/results/bench_onnxruntime_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from baseline import baseline_env

CONFIG = dict(
    TINY_CONFIG,
    vocab_size=32000,
    hidden_size=1024,
    hybrid_override_pattern="MEMEM*EMEMEM*E",
    num_attention_heads=16,
    num_key_value_heads=2,
    head_dim=64,
    mamba_num_heads=32,
    mamba_head_dim=64,
    n_groups=8,
    ssm_state_size=128,
    chunk_size=128,
    n_routed_experts=64,
    num_experts_per_tok=6,
    moe_intermediate_size=512,
    moe_shared_expert_intermediate_size=1024,
    n_group=1,
    topk_group=1,
    max_position_embeddings=4096,
)
PRECISIONS = {"float32": [], "float16": ["--dtype", "float16"], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4"]}
PAST = (128, 1024, 4000)
THREADS = (1, 2)
BATCHES = (4, 8)


def cli(*args, env=None) -> str:
    """`nemotron-deploy ARGS` in a fresh child process (its own memory peak; `env` may select a baseline)."""
    done = subprocess.run([sys.executable, "-m", "nemotron_deploy.runtime.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"nemotron-deploy {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def bench(artifact: Path, threads: int, batch: int, prompt_len: int, new_tokens: int, past=()) -> dict:
    past_args = [a for p in past for a in ("--past", p)]
    out = cli(
        "bench",
        artifact,
        "--prompt-len",
        prompt_len,
        "--new-tokens",
        new_tokens,
        "--batch",
        batch,
        "--threads",
        threads,
        *past_args,
        "--json",
    )
    return json.loads(out.strip().splitlines()[-1])


def transformers_eager(checkpoint: Path, threads: int, prompt_len: int, new_tokens: int, past_lengths) -> dict:
    import torch
    from transformers import NemotronHForCausalLM

    torch.set_num_threads(threads)
    model = NemotronHForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    model.config._experts_implementation = "eager"
    model.config._attn_implementation = "eager"
    rng = np.random.default_rng(0)

    @torch.no_grad()
    def prefill(length):
        ids = torch.from_numpy(rng.integers(3, CONFIG["vocab_size"], (1, length)))
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        return time.perf_counter() - start, out, ids

    @torch.no_grad()
    def decode_rate(length, rounds=3):  # as runtime/bench.py: the best of 3 equal rounds of one sequence
        _, out, ids = prefill(length)
        cache, token, mask = out.past_key_values, out.logits[:, -1:].argmax(-1), torch.ones_like(ids)
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(new_tokens // rounds):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                out = model(token, past_key_values=cache, use_cache=True, attention_mask=mask)
                token = out.logits[:, -1:].argmax(-1)
            best = min(best, time.perf_counter() - start)
        return (new_tokens // rounds) / best

    prefill(8)  # warm-up
    prefill_s = min(prefill(prompt_len)[0] for _ in range(2))
    return {
        "threads": threads,
        "prefill_tokens_per_s": prompt_len / prefill_s,
        "decode_tokens_per_s": decode_rate(prompt_len),
        "decode_tokens_per_s_at_past": {str(p): decode_rate(p) for p in past_lengths},
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run(args, work: Path) -> dict:
    ckpt = write_random_checkpoint(work / "ckpt", config=CONFIG)
    before = baseline_env(work, args.baseline_rev)
    artifacts = {
        f"before ({args.baseline_rev}) {name}": (work / f"before-{name}", before, PRECISIONS[name])
        for name in args.baseline_precisions.split(",")
    }
    artifacts |= {name: (work / name, None, extra) for name, extra in PRECISIONS.items()}
    results = {"configs": {}, "transformers": {}}
    for name, (path, env, extra) in artifacts.items():
        start = time.perf_counter()
        cli("export", ckpt, "-o", path, *extra, env=env)
        entry = results["configs"][name] = {
            "export_s": time.perf_counter() - start,
            "weights_mb": (path / "weights.data").stat().st_size / 2**20,
        }
        # every artifact runs on this tree's runtime and `bench` (one measurement for all; what differs
        # between 'before' and 'float32' is only the exported graphs)
        for threads in THREADS:
            print(f"{name}: {threads} thread(s)", file=sys.stderr)
            entry[f"threads_{threads}"] = bench(path, threads, 1, args.prompt_len, args.new_tokens, PAST)
        for batch in BATCHES:
            entry[f"batch_{batch}"] = bench(path, max(THREADS), batch, 128, args.new_tokens // 2)
    for threads in THREADS:
        print(f"transformers: {threads} thread(s)", file=sys.stderr)
        results["transformers"][f"threads_{threads}"] = transformers_eager(ckpt, threads, args.prompt_len, args.new_tokens, PAST)
    results["num_parameters"] = json.loads((work / "float32" / "manifest.json").read_text())["model"]["num_parameters"]
    return results


def render(results: dict, args, plot_name: str) -> str:
    eager = results["transformers"]
    lines = [
        f"# onnxruntime CPU vs transformers eager ({datetime.date.today()})",
        "",
        f"Machine: {cpu_name()}, no GPU. `python benchmarks/bench_vs_transformers.py`: one run, same checkpoint, every",
        "configuration of ours in a fresh child process (`nemotron-deploy bench --json`), one after the other; 'before' is",
        f"revision {args.baseline_rev}'s export (the exporter before this tree's changes) run by this tree's runtime.",
        f"Model: random NemotronH, pattern {CONFIG['hybrid_override_pattern']} (Nano-30B-like ratio of layer kinds), "
        f"{results['num_parameters'] / 1e6:.0f} M parameters, 64 experts top-6. Batch 1, prompt {args.prompt_len}, "
        f"{args.new_tokens} decode steps (the best of 3 rounds of {args.new_tokens // 3}: this machine is shared and noisy). The floor: the weight bytes a decode step must read (the model's own, at the",
        "stored precision: routed experts k of 64, no embedding table) over the measured copy bandwidth.",
        "",
        f"![decode tokens/s against past length]({plot_name})",
        "",
        "| configuration | threads | prefill tok/s | vs eager | decode tok/s | vs eager | "
        + " | ".join(f"decode after {p}" for p in PAST)
        + " | MB read / token | floor tok/s | of floor | peak RSS MiB |",
        "| --- " * (10 + len(PAST)) + "|",
    ]
    for name, entry in results["configs"].items():
        for threads in THREADS:
            r, e = entry[f"threads_{threads}"], eager[f"threads_{threads}"]
            at = " | ".join(f"{r['decode_tokens_per_s_at_past'][str(p)]:.1f}" for p in PAST)
            lines.append(
                f"| {name} | {threads} | {r['prefill_tokens_per_s']:.0f} | {r['prefill_tokens_per_s'] / e['prefill_tokens_per_s']:.2f}x | "
                f"{r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / e['decode_tokens_per_s']:.2f}x | {at} | "
                f"{r['decode_bytes_per_token'] / 1e6:.0f} | {r['decode_floor_tokens_per_s']:.1f} | {100 * r['decode_fraction_of_floor']:.0f} % | {r['peak_rss_mb']:.0f} |"
            )
    for threads in THREADS:
        e = eager[f"threads_{threads}"]
        at = " | ".join(f"{e['decode_tokens_per_s_at_past'][str(p)]:.1f}" for p in PAST)
        lines.append(
            f"| transformers 5.23 eager float32 | {threads} | {e['prefill_tokens_per_s']:.0f} | 1.00x | {e['decode_tokens_per_s']:.1f} | 1.00x | {at} | | | | |"
        )
    fp32 = results["configs"]["float32"][f"threads_{max(THREADS)}"]["decode_tokens_per_s"]
    lines += [
        "",
        f"Decode speed-up over this tree's float32 at {max(THREADS)} threads: "
        + ", ".join(
            f"{name} {entry[f'threads_{max(THREADS)}']['decode_tokens_per_s'] / fp32:.2f}x" for name, entry in results["configs"].items()
        )
        + ".",
    ]
    lines += [
        "",
        f"Batched decode ({max(THREADS)} threads, prompt 128, {args.new_tokens // 2} steps), tokens/s summed over the batch:",
        "",
        "| configuration | batch 1 | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
        "| --- " * (2 + len(BATCHES)) + "|",
    ]
    for name, entry in results["configs"].items():
        single = entry[f"threads_{max(THREADS)}"]["decode_tokens_per_s"]
        lines.append(
            f"| {name} | {single:.1f} | " + " | ".join(f"{entry[f'batch_{b}']['decode_tokens_per_s']:.1f}" for b in BATCHES) + " |"
        )
    lines += [
        "",
        "Exports: "
        + "; ".join(f"{name} {e['export_s']:.0f} s, weights.data {e['weights_mb']:.0f} MiB" for name, e in results["configs"].items())
        + ".",
    ]
    lines += ["", "```json", json.dumps(results, indent=1), "```"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    threads = max(THREADS)
    series = {name: entry[f"threads_{threads}"] for name, entry in results["configs"].items()}
    series["transformers eager"] = results["transformers"][f"threads_{threads}"]
    for i, (name, r) in enumerate(series.items()):
        xs = list(PAST)
        ys = [r["decode_tokens_per_s_at_past"][str(p)] for p in PAST]
        (line,) = left.plot(xs, ys, marker="o", label=name, color=f"C{i}")
        if "decode_floor_tokens_per_s" in r:
            left.axhline(r["decode_floor_tokens_per_s"], color=line.get_color(), linestyle="--", linewidth=0.8)
    left.set(
        xscale="log",
        xlabel="past length (tokens)",
        ylabel="decode tokens/s (batch 1)",
        title=f"decode, {threads} threads (dashed: each one's floor)",
    )
    left.set_xticks(list(PAST), [str(p) for p in PAST])
    left.minorticks_off()
    left.legend(fontsize=8)
    names = list(results["configs"])
    width = 0.8 / len(THREADS)
    for j, t in enumerate(THREADS):
        fractions = [100 * results["configs"][n][f"threads_{t}"]["decode_fraction_of_floor"] for n in names]
        right.bar(np.arange(len(names)) + j * width, fractions, width, label=f"{t} thread{'s' if t > 1 else ''}")
    right.axhline(100, color="black", linewidth=0.8)
    right.set_xticks(np.arange(len(names)) + width * (len(THREADS) - 1) / 2, names, fontsize=8)
    right.set(ylabel="% of the bandwidth floor", title="decode after the prompt against its floor")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/bench_onnxruntime_cpu.md")
    ap.add_argument("--baseline-rev", default="e0164e0", help="the revision 'before' is exported and run with")
    ap.add_argument(
        "--baseline-precisions", default="float32", help="comma-separated: which of float32,float16,int8,int4 the baseline also exports"
    )
    ap.add_argument("--workdir", default=".", help="where the checkpoint and artifacts are written (several GB), deleted after")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=48, help="decode steps per measurement (timed as the best of 3 equal rounds)")
    ap.add_argument("--render", help="re-render the report from this results JSON instead of measuring")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.render:
        results = json.loads(Path(args.render).read_text())
    else:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            results = run(args, Path(tmp))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    png = out.with_name(out.stem + "_decode.png")
    plot(results, png)
    out.write_text(render(results, args, png.name))
    print(out.read_text())


if __name__ == "__main__":
    main()
