"""One measured process for benchmarks/bench_memory.py: open an artifact, prefill one prompt, decode;
print one JSON line.

    python benchmarks/memory_child.py ARTIFACT [--prompt-len 128] [--new-tokens 32] [--threads 2] [--hold]

Uses only `Session` (every revision has it), so PYTHONPATH may put another revision of the package
first; the sampler (runtime/memory.py, which imports nothing of ours) is loaded from this tree by path.
Memory is reported over the process's baseline after its imports: RssAnon growth (anonymous memory)
and VmRSS (all resident pages, the weights file's included), peaks of the open and of the run; plus
the process's own peak RSS (VmHWM) and its proportional set size (Pss: shared pages divided among the
processes that map them). A first open of a quantized artifact builds the pre-packed cache in a child
process: its peak anonymous memory is sampled too (builder_peak_anon_mb), and the open's peak of both
processes together (open_peak_total_anon_mb, over the baseline). --hold: after the run, print the JSON and wait for a line on stdin (a second
process then opens the same artifact beside this one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_memory", Path(__file__).parents[1] / "runtime" / "memory.py")
memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime  # noqa: F401  (imported before the baseline: its cost is not the artifact's)

    from nemotron_deploy.runtime.session import Session

    base = {**memory.status_kib(), **memory.pss_kib()}
    start = time.perf_counter()
    with memory.PeakMemory(pss=True, children=True) as opening:
        session = Session(args.artifact, threads=args.threads)
    open_s = time.perf_counter() - start
    after_open = memory.status_kib()
    prompt = np.random.default_rng(0).integers(3, session.vocab_size, args.prompt_len).tolist()
    arrivals: list[float] = []
    start = time.perf_counter()
    with memory.PeakMemory(pss=True) as running:
        generation = session.generate(
            [prompt], max_new_tokens=args.new_tokens, ignore_eos=True, on_token=lambda row, token: arrivals.append(time.perf_counter())
        )
    weights = Path(args.artifact, "weights.data").stat().st_size / 2**20
    mib = lambda kib: kib / 1024  # noqa: E731
    result = {
        "weights_mb": weights,
        "open_s": open_s,
        "builder_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # a cache build's child, if any
        "builder_peak_anon_mb": opening.children_anon_mib,  # sampled: 0 where the open built nothing
        # this process's growth and its children's together, at the open's peak: what a first open takes
        "open_peak_total_anon_mb": opening.total_anon_mib - mib(base["RssAnon"]),
        "prefill_tokens_per_s": args.prompt_len / (arrivals[0] - start),
        "decode_tokens_per_s": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else None,
        "base_anon_mb": mib(base["RssAnon"]),
        "base_rss_mb": mib(base["VmRSS"]),
        "base_pss_mb": mib(base.get("Pss", 0)),
        "open_anon_mb": mib(after_open["RssAnon"] - base["RssAnon"]),
        "open_peak_anon_mb": opening.anon_mib - mib(base["RssAnon"]),
        "open_peak_rss_mb": opening.rss_mib,
        "peak_anon_mb": max(opening.anon_mib, running.anon_mib) - mib(base["RssAnon"]),
        "peak_rss_mb": memory.process_peak_rss_mib(),
        "pss_mb": memory.pss_kib().get("Pss", 0) / 1024,  # at the end
        "peak_pss_mb": max(opening.pss_mib or 0, running.pss_mib or 0),
        "tokens": generation.new_token_ids[0][:16],
    }
    print(json.dumps(result), flush=True)
    if args.hold:
        sys.stdin.readline()
    os._exit(0)  # skip interpreter teardown (freeing sessions): nothing left to measure


if __name__ == "__main__":
    main()
