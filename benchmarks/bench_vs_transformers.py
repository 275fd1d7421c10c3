"""Side by side, one run: our onnxruntime CPU artifact vs transformers eager, on the same checkpoint.

Makes a random NemotronH checkpoint of a few hundred million parameters with Nemotron-3-Nano-30B-A3B's
ratio of layer kinds (mamba : moe : attention ~ 4 : 4 : 1, 64 experts, top-6), exports it (float32),
then measures prefill tokens/s, decode tokens/s (after the prompt, and after 128 and 2048 tokens of
context), the machine's copy bandwidth and the decode floor it implies, for both.
Usage: python benchmarks/bench_vs_transformers.py [--out benchmarks/results/bench_onnxruntime_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.runtime.bench import run_bench
from nemotron_deploy.runtime.manifest import read_manifest
from nemotron_deploy.runtime.backends import open_backend

CONFIG = dict(
    TINY_CONFIG,
    vocab_size=32000, hidden_size=1024, hybrid_override_pattern="MEMEM*EMEMEM*E",
    num_attention_heads=16, num_key_value_heads=2, head_dim=64,
    mamba_num_heads=32, mamba_head_dim=64, n_groups=8, ssm_state_size=128, chunk_size=128,
    n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=512,
    moe_shared_expert_intermediate_size=1024, n_group=1, topk_group=1, max_position_embeddings=4096,
)  # fmt: skip


@torch.no_grad()
def transformers_eager(checkpoint: Path, prompt_len: int, new_tokens: int, past_lengths) -> dict:
    from transformers import NemotronHForCausalLM

    model = NemotronHForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    model.config._experts_implementation = "eager"
    model.config._attn_implementation = "eager"
    rng = np.random.default_rng(0)

    def prefill(length):
        ids = torch.from_numpy(rng.integers(3, CONFIG["vocab_size"], (1, length)))
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        return time.perf_counter() - start, out, ids

    def decode_rate(length):
        _, out, ids = prefill(length)
        cache, token, mask = out.past_key_values, out.logits[:, -1:].argmax(-1), torch.ones_like(ids)
        start = time.perf_counter()
        for _ in range(new_tokens):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model(token, past_key_values=cache, use_cache=True, attention_mask=mask)
            token = out.logits[:, -1:].argmax(-1)
        return new_tokens / (time.perf_counter() - start)

    prefill(8)  # warm-up
    prefill_s = min(prefill(prompt_len)[0] for _ in range(2))
    return {
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/bench_onnxruntime_cpu.md")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    past = (128, 2048)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", config=CONFIG)
        start = time.perf_counter()
        artifact = export_artifact(ckpt, Path(tmp) / "onnx", progress=False)
        export_s = time.perf_counter() - start
        export_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        weights_mb = (artifact / "weights.data").stat().st_size / 2**20
        manifest = read_manifest(artifact)
        ours = run_bench(open_backend(manifest), manifest, args.prompt_len, args.new_tokens, 1, past)
        theirs = transformers_eager(ckpt, args.prompt_len, args.new_tokens, past)
    params = manifest.model["num_parameters"]
    rows = [("prefill tokens/s", "prefill_tokens_per_s"), ("decode tokens/s (after the prompt)", "decode_tokens_per_s")]
    table = [f"| {label} | {ours[key]:.1f} | {theirs[key]:.1f} | {ours[key] / theirs[key]:.2f}x |" for label, key in rows]
    for p in past:
        o, t = ours["decode_tokens_per_s_at_past"][str(p)], theirs["decode_tokens_per_s_at_past"][str(p)]
        table.append(f"| decode tokens/s after {p} tokens | {o:.1f} | {t:.1f} | {o / t:.2f}x |")
    lines = [
        f"# onnxruntime CPU vs transformers eager ({datetime.date.today()})",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, no GPU. Same process, same checkpoint, run one after the other.",
        f"Model: random NemotronH, pattern {CONFIG['hybrid_override_pattern']} (Nano-30B-like ratio of layer kinds), "
        f"{params / 1e6:.0f} M parameters, 64 experts top-6, float32. Batch 1, prompt {args.prompt_len}, {args.new_tokens} decode steps.",
        f"Export took {export_s:.0f} s (most of it tracing the prefill graph's unrolled per-expert loops); "
        f"peak RSS during export {export_peak_mb:.0f} MiB for {weights_mb:.0f} MiB of weights "
        "(process peak right after the export; not broken down further).",
        "",
        "| measure | nemotron-deploy (onnxruntime CPU) | transformers 5.23 eager | ratio |",
        "| --- | --- | --- | --- |",
        *table,
        "",
        f"Memory copy bandwidth {ours['memory_bandwidth_gb_per_s']:.1f} GB/s; a decode step reads {ours['decode_bytes_per_token'] / 1e6:.0f} MB "
        f"of weights, so the bandwidth floor is {ours['decode_floor_tokens_per_s']:.1f} tokens/s; our decode runs at "
        f"{100 * ours['decode_fraction_of_floor']:.0f} % of it. Peak RSS of the process {ours['peak_rss_mb']:.0f} MiB.",
        "",
        "```json",
        json.dumps({"nemotron_deploy": ours, "transformers": theirs}, indent=1),
        "```",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
