"""Tokens/s of 1, 4 and 16 concurrent streams through a real tritonserver (the `generate` model,
continuous batching, gRPC streaming) against `nemotron-deploy bench` in-process at the same batch,
in one run on one machine.

    python benchmarks/bench_triton.py [--out benchmarks/results/triton_cpu.md]

Server side: C clients start together, each streams `--new-tokens` tokens after a `--prompt-len`
prompt (ignore_eos). Reported: end-to-end tokens/s (all tokens / wall time, prefill and queueing
included), steady decode tokens/s (tokens after each stream's first / the span in which every stream
was decoding), median time to first token and inter-token latency. In-process: decode tokens/s of
`bench --batch C` (best of three rounds). The client threads share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "docs" / "examples"))
from bench_vs_transformers import CONFIG, cli, cpu_name
from triton_stream import stream

from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint
from nemotron_deploy.runtime.serving.triton.server import TritonServer

CONCURRENCY = (1, 4, 16)


def _decode_steps(server) -> float:
    with urllib.request.urlopen(server.endpoints.metrics_url, timeout=10) as response:
        return sum(
            float(line.split()[-1]) for line in response.read().decode().splitlines() if line.startswith("nemotron_decode_steps_total{")
        )


def through_server(server, streams: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    rng = np.random.default_rng(streams)
    prompts = rng.integers(3, vocab, (streams, prompt_len)).astype(np.int32)
    stamps: list[list[float]] = [[] for _ in range(streams)]
    barrier = threading.Barrier(streams + 1)

    def client(i: int) -> None:
        one = lambda v, dtype: np.array([[v]], dtype=dtype)  # noqa: E731
        inputs = {
            "input_ids": prompts[i : i + 1],
            "request_output_len": one(new_tokens, np.int32),
            "streaming": one(True, np.bool_),
            "ignore_eos": one(True, np.bool_),
        }
        barrier.wait()
        for ids in stream(server.endpoints.grpc_url, "tensorrt_llm", inputs, "output_ids", timeout=600):
            stamps[i].extend([time.perf_counter()] * ids.size)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    steps_before = _decode_steps(server)
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert all(len(s) == new_tokens for s in stamps), [len(s) for s in stamps]
    first, last = max(s[0] for s in stamps), min(s[-1] for s in stamps)  # the span in which every stream was decoding
    steady = sum(sum(1 for t in s if first < t <= last) for s in stamps) / (last - first) if last > first else float("nan")
    time.sleep(0.3)  # the model flushes its counters when idle
    return {
        "streams": streams,
        "end_to_end_tokens_per_s": streams * new_tokens / wall,
        "steady_decode_tokens_per_s": steady,
        "time_to_first_token_ms": statistics.median(s[0] - start for s in stamps) * 1e3,
        "inter_token_ms": statistics.median(b - a for s in stamps for a, b in zip(s, s[1:]) if b > a) * 1e3,
        "decode_steps": _decode_steps(server) - steps_before,
    }


def run(args, work: Path) -> dict:
    ckpt = write_random_checkpoint(work / "ckpt", config=CONFIG)
    artifact = work / "artifact"
    cli("export", ckpt, "-o", artifact)
    cli("triton", artifact, "-o", work / "repo", "--max-batch", max(CONCURRENCY))
    in_process = {}
    for batch in CONCURRENCY:
        out = json.loads(
            cli("bench", artifact, "--prompt-len", args.prompt_len, "--new-tokens", args.new_tokens, "--batch", batch, "--json")
            .strip()
            .splitlines()[-1]
        )
        in_process[batch] = out["decode_tokens_per_s"]
    served = []
    with TritonServer(work / "repo", log_file=work / "server.log") as server:
        through_server(server, 1, 8, 4, CONFIG["vocab_size"])  # warm-up
        for streams in CONCURRENCY:
            served.append(through_server(server, streams, args.prompt_len, args.new_tokens, CONFIG["vocab_size"]))
            served[-1]["in_process_decode_tokens_per_s"] = in_process[streams]
    return {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_name(),
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "pattern": CONFIG["hybrid_override_pattern"],
        "hidden_size": CONFIG["hidden_size"],
        "rows": served,
    }


def render(results: dict) -> str:
    lines = [
        "# Triton serving vs the in-process runtime (onnxruntime, CPU)",
        "",
        f"{results['date']}, {results['machine']}; written by `benchmarks/bench_triton.py` (one run). Model: random NemotronH, "
        f"pattern {results['pattern']}, hidden {results['hidden_size']}, float32, onnxruntime target. Each stream: a "
        f"{results['prompt_len']}-token prompt, {results['new_tokens']} new tokens (ignore_eos). Server: `nemotron-deploy triton "
        "--max-batch 16` in nvidia-pytriton's tritonserver, clients streaming over gRPC on loopback from threads of one process "
        "on the same cores. In-process: `nemotron-deploy bench --batch N` (decode only, best of three rounds).",
        "",
        "| streams | end-to-end tok/s | steady decode tok/s | in-process decode tok/s (batch = streams) | steady / in-process | decode steps (served) | TTFT ms (median) | inter-token ms (median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['streams']} | {r['end_to_end_tokens_per_s']:.1f} | {r['steady_decode_tokens_per_s']:.1f} | {r['in_process_decode_tokens_per_s']:.1f} | "
            f"{r['steady_decode_tokens_per_s'] / r['in_process_decode_tokens_per_s']:.2f} | {r['decode_steps']:.0f} | "
            f"{r['time_to_first_token_ms']:.0f} | {r['inter_token_ms']:.1f} |"
        )
    lines += [
        "",
        f"Decode steps: {results['new_tokens']} tokens per stream take {results['new_tokens'] - 1} steps however many streams share them "
        "(continuous batching; more where a stream joined late).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/triton_cpu.md")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.write_text(render(results))
    print(out.read_text())


if __name__ == "__main__":
    main()
