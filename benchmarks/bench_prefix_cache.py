"""Multi-turn time to first token with and without the prefix cache, through `serve`'s OpenAI completions
endpoint, in one run.

    python benchmarks/bench_prefix_cache.py [--model bench|tiny] [--turns 8] [--user-tokens 200] [--reply-tokens 32]
                                            [--out benchmarks/results/prefix_cache_cpu.md]

Two servers of one artifact run side by side: `serve` (the prefix cache at its default) and `serve
--prefix-cache-mb 0`. One conversation of `--turns` turns: each turn the client sends the whole history
(every earlier prompt and reply) and `--user-tokens` new token ids, and streams `--reply-tokens` greedy
tokens back (ignore_eos); both servers get the same prompt each turn, one after the other, and must
stream the same text (the uncached server is the oracle). Reported per turn: prompt length, time to
first token on each server, and the prompt tokens each server's prefill computed (its
`nemotron_prefill_tokens_total`), with the cache's hits and bytes held.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_openai import MODEL, _serve, bench_artifact
from bench_vs_transformers import CONFIG, cpu_name

from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG


def metric(url: str, name: str) -> float:
    """The sum over instances of `nemotron_<name>`."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^nemotron_{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def settled(url: str, name: str, last: float, wait_s: float = 5.0) -> float:
    """The metric once it has moved past `last` (the batcher publishes its counters when it goes idle)."""
    deadline = time.monotonic() + wait_s
    while (value := metric(url, name)) == last and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def turn(client, prompt: list[int], new_tokens: int) -> tuple[float, str]:
    """(seconds to the first streamed token, the text) of one completion."""
    start = time.perf_counter()
    first, text = None, []
    chunks = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=new_tokens, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.text and first is None:
                first = time.perf_counter() - start
            text.append(choice.text or "")
    return first, "".join(text)


def main() -> None:
    import openai
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("tiny", "bench"), default="bench")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--user-tokens", type=int, default=200)
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default="benchmarks/results/prefix_cache_cpu.md")
    args = ap.parse_args()
    config = TINY_CONFIG if args.model == "tiny" else CONFIG
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prefix-", dir=args.workdir) as tmp:
        artifact = bench_artifact(Path(tmp), config)
        tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
        servers = {}
        try:
            for name, options in (("cached", ()), ("uncached", ("--prefix-cache-mb", "0"))):
                proc, _, base_url = _serve(artifact, Path(tmp) / f"serve-{name}.log", "--threads", "2", *options)
                servers[name] = (proc, openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600))
            for _, client in servers.values():  # warm both
                turn(client, [5, 6, 7, 8], 2)
            history: list[int] = []
            for t in range(1, args.turns + 1):
                prompt = history + rng.integers(4, config["vocab_size"], args.user_tokens).tolist()
                row = {"turn": t, "prompt_tokens": len(prompt)}
                texts = {}
                for name, (proc, client) in servers.items():
                    before = {m: metric(proc.metrics_url, m) for m in ("prefill_tokens_total", "prefix_cache_hits_total")}
                    row[f"{name}_ttft_s"], texts[name] = turn(client, prompt, args.reply_tokens)
                    row[f"{name}_prefill_tokens"] = (
                        settled(proc.metrics_url, "prefill_tokens_total", before["prefill_tokens_total"]) - before["prefill_tokens_total"]
                    )
                    row[f"{name}_hits"] = metric(proc.metrics_url, "prefix_cache_hits_total") - before["prefix_cache_hits_total"]
                row["cache_bytes"] = metric(servers["cached"][0].metrics_url, "prefix_cache_bytes")
                row["same_text"] = texts["cached"] == texts["uncached"]
                assert row["same_text"], f"turn {t}: the cached server streamed other text than the uncached one"
                rows.append(row)
                print(json.dumps(row), flush=True)
                history = prompt + tokenizer.encode(texts["cached"], add_special_tokens=False).ids
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)
    Path(args.out).write_text(render(rows, args, config))
    print(Path(args.out).read_text())


def render(rows: list[dict], args, config: dict) -> str:
    date = datetime.date.today().isoformat()
    first, last = rows[0], rows[-1]
    lines = [
        f"# Multi-turn time to first token with the prefix cache, onnxruntime CPU ({date})",
        "",
        f"Machine: {cpu_name()}, no GPU. `python benchmarks/bench_prefix_cache.py --model {args.model}`: one run; two `serve` "
        f"processes of one float32 artifact side by side (prefix cache at its default; `--prefix-cache-mb 0`), 2 threads each, "
        f"taking turns; model {args.model} ({config['hybrid_override_pattern']}, hidden {config['hidden_size']}). One conversation of "
        f"{args.turns} turns: the whole history plus {args.user_tokens} new token ids per turn, {args.reply_tokens} greedy tokens "
        "streamed back (ignore_eos) through `/v1/completions`; both servers streamed the same text every turn. Prefill tokens: what "
        "each server's prefill computed for the turn (`nemotron_prefill_tokens_total`).",
        "",
        "| turn | prompt tokens | TTFT cached ms | TTFT uncached ms | uncached / cached | prefill tokens cached | prefill tokens uncached | cache hit | cache MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c, u = r["cached_ttft_s"] * 1000, r["uncached_ttft_s"] * 1000
        lines.append(
            f"| {r['turn']} | {r['prompt_tokens']} | {c:.0f} | {u:.0f} | {u / c:.2f} | {r['cached_prefill_tokens']:.0f} | "
            f"{r['uncached_prefill_tokens']:.0f} | {'yes' if r['cached_hits'] else 'no'} | {r['cache_bytes'] / 2**20:.0f} |"
        )
    lines += [
        "",
        f"Turn {last['turn']} / turn 1 time to first token: cached {last['cached_ttft_s'] / first['cached_ttft_s']:.2f}x, "
        f"uncached {last['uncached_ttft_s'] / first['uncached_ttft_s']:.2f}x.",
        "",
        "```json",
        json.dumps(rows, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
