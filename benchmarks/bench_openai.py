"""The OpenAI endpoint's own overhead: the same requests through `/v1/completions` (the `openai` client,
streamed) and straight to Triton's `tensorrt_llm` model over gRPC, 1, 4 and 16 concurrent streams, in
one run against one `nemotron-deploy serve`.

    python benchmarks/bench_openai.py [--out benchmarks/results/openai_cpu.md] [--model tiny|bench]

Each of C clients starts together and streams `--new-tokens` greedy tokens (ignore_eos) after a
`--prompt-len`-token prompt (token ids, so both paths run the same prompt). Reported per path: end-to-end
tokens/s (all tokens / wall time), median time to first token, and the endpoint's ratios to gRPC. Both
paths alternate, two rounds each; the clients share the machine's cores with the server. The tiny model
makes the endpoint's overhead as visible as it gets (each step is short). The checkpoint's tokenizer is
replaced by one word per id, so that every token streams text, as with a real model's tokenizer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
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

from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.runtime.serving.triton.server import free_port

CONCURRENCY = (1, 4, 16)
MODEL = "bench"


def _prompts(streams: int, prompt_len: int, vocab: int) -> list[list[int]]:
    return np.random.default_rng(streams).integers(3, vocab, (streams, prompt_len)).tolist()


def _run(clients: int, one) -> dict:
    """`one(i)` -> that client's token arrival times; all start together. Tokens/s and median TTFT."""
    stamps: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        barrier.wait()
        stamps[i] = one(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    end = max(s[-1] for s in stamps)
    tokens = sum(len(s) for s in stamps)
    return {"tokens": tokens, "tokens_per_s": tokens / (end - start), "ttft_s": statistics.median(s[0] - start for s in stamps)}


def via_grpc(grpc_url: str, prompts, new_tokens: int) -> dict:
    def one(i: int) -> list[float]:
        scalar = lambda v, dtype: np.array([[v]], dtype=dtype)  # noqa: E731
        inputs = {
            "input_ids": np.array([prompts[i]], dtype=np.int32),
            "request_output_len": scalar(new_tokens, np.int32),
            "streaming": scalar(True, np.bool_),
            "ignore_eos": scalar(True, np.bool_),
        }
        times = []
        for ids in stream(grpc_url, "tensorrt_llm", inputs, "output_ids", timeout=600):
            times.extend([time.perf_counter()] * ids.size)
        return times

    return _run(len(prompts), one)


def via_openai(base_url: str, prompts, new_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    def one(i: int) -> list[float]:
        times = []
        chunks = client.completions.create(
            model=MODEL,
            prompt=prompts[i],
            max_tokens=new_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in chunks:
            if chunk.usage is not None:  # the last chunk: how many tokens the text chunks carried
                times.extend([times[-1]] * (chunk.usage.completion_tokens - len(times)))
            elif chunk.choices:
                times.append(time.perf_counter())
        return times

    return _run(len(prompts), one)


def _word_per_id_tokenizer(path: Path, vocab: int) -> None:
    """Every id decodes to text, as with a real model's tokenizer (the demo tokenizer covers a few hundred
    ids: most of a random 32k-vocabulary model's tokens would stream no text, and no chunk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
    words.update({f"w{i}": i for i in range(4, vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>"])
    tok.save(str(path))


def bench_artifact(folder: Path, config: dict) -> Path:
    """A random checkpoint of `config` with the word-per-id tokenizer, exported (float32) to folder/artifact."""
    ckpt = write_random_checkpoint(folder / "ckpt", config=config)
    _word_per_id_tokenizer(ckpt / "tokenizer.json", config["vocab_size"])
    cli("export", ckpt, "-o", folder / "artifact")
    return folder / "artifact"


def _serve(artifact: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str, str]:
    """`nemotron-deploy serve` (with `options`) on free ports, once healthy: (process, gRPC address,
    OpenAI base URL); the process's `metrics_url` is its Triton metrics."""
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "openai")}
    cmd = [
        sys.executable,
        "-m",
        "nemotron_deploy.runtime.cli",
        "serve",
        str(artifact),
        "--served-model-name",
        MODEL,
        "--max-batch",
        "16",
        *(x for name, port in ports.items() for x in (f"--{name}-port", str(port))),
        *options,
    ]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    proc.metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    base = f"http://127.0.0.1:{ports['openai']}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, f"127.0.0.1:{ports['grpc']}", f"{base}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"serve did not come up:\n{log.read_text()[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("tiny", "bench"), default="tiny")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/openai_cpu.md")
    args = ap.parse_args()
    config = TINY_CONFIG if args.model == "tiny" else CONFIG
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-openai-") as tmp:
        proc, grpc_url, base_url = _serve(bench_artifact(Path(tmp), config), Path(tmp) / "serve.log")
        try:
            via_grpc(grpc_url, _prompts(2, args.prompt_len, config["vocab_size"]), 4)  # warm both paths
            via_openai(base_url, _prompts(2, args.prompt_len, config["vocab_size"]), 4)
            for clients in CONCURRENCY:
                prompts = _prompts(clients, args.prompt_len, config["vocab_size"])
                runs = {"grpc": [], "openai": []}
                for _ in range(args.rounds):
                    runs["grpc"].append(via_grpc(grpc_url, prompts, args.new_tokens))
                    runs["openai"].append(via_openai(base_url, prompts, args.new_tokens))
                for path, measured in runs.items():
                    assert all(m["tokens"] == clients * args.new_tokens for m in measured), measured
                rows.append(
                    {
                        "streams": clients,
                        **{
                            f"{path}_{key}": [m[key] for m in measured]
                            for path, measured in runs.items()
                            for key in ("tokens_per_s", "ttft_s")
                        },
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    Path(args.out).write_text(render(rows, args, config))
    print(Path(args.out).read_text())


def render(rows: list[dict], args, config: dict) -> str:
    date = datetime.date.today().isoformat()
    best = lambda values: max(values)  # noqa: E731
    low = lambda values: min(values)  # noqa: E731
    lines = [
        f"# OpenAI endpoint overhead, onnxruntime CPU ({date})",
        "",
        f"Machine: {cpu_name()}, no GPU. `python benchmarks/bench_openai.py --model {args.model}`: one run, one `serve` "
        f"(--max-batch 16); model {args.model} ({config['hybrid_override_pattern']}, hidden {config['hidden_size']}); prompt "
        f"{args.prompt_len} token ids, {args.new_tokens} greedy new tokens per stream (ignore_eos), streamed. Per cell the best of "
        f"{args.rounds} rounds (tokens/s: highest; time to first token: lowest); the two paths alternate. Ratios: endpoint / gRPC.",
        "",
        "| streams | gRPC tok/s | OpenAI tok/s | tok/s ratio | gRPC TTFT ms | OpenAI TTFT ms | TTFT ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        g, o = best(r["grpc_tokens_per_s"]), best(r["openai_tokens_per_s"])
        gt, ot = low(r["grpc_ttft_s"]) * 1000, low(r["openai_ttft_s"]) * 1000
        lines.append(f"| {r['streams']} | {g:.1f} | {o:.1f} | {o / g:.2f} | {gt:.1f} | {ot:.1f} | {ot / gt:.2f} |")
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
