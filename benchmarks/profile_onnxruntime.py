"""Where an onnxruntime step spends its time: onnxruntime's own profiler, by op type, for several artifacts
side by side in one run (e.g. before / after a change, float32 / int8 / int4).

For each artifact: both sessions opened with profiling, a prefill of --prompt-len tokens (timed over
--repeats runs after a warm-up), then --steps decode steps; the profile's kernel times are summed per
op type (the share of the kernels' total) next to the whole `model_run` time per step (kernels plus
onnxruntime's own overhead between them). The profiler adds its own cost per node, so compare shares
and ratios, not these absolute times with `bench`'s.

Usage: python benchmarks/profile_onnxruntime.py LABEL=ARTIFACT_DIR... [--threads 1,2] [--out benchmarks/results/profile_onnxruntime_cpu.md]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def profile(artifact: Path, prompt_len: int, steps: int, repeats: int, top: int, threads: int | None = None) -> dict:
    import onnxruntime as ort

    from nemotron_deploy.runtime.artifact.manifest import read_manifest
    from nemotron_deploy.runtime.backends import open_backend
    from nemotron_deploy.runtime.decode import left_pad, prefill

    manifest = read_manifest(artifact)
    with tempfile.TemporaryDirectory() as tmp:
        plain = ort.SessionOptions

        class Profiled(plain):  # the backend makes its own SessionOptions: give it profiling ones
            def __init__(self):
                super().__init__()
                self.enable_profiling = True
                self.profile_file_prefix = os.path.join(tmp, "profile")

        ort.SessionOptions = Profiled
        try:
            backend = open_backend(manifest, threads=threads)
        finally:
            ort.SessionOptions = plain
        phases: dict[int, list[str]] = collections.defaultdict(list)  # session -> the phase of each of its runs, in order
        phase = ["warm-up"]
        step = backend.step

        def tagged(graph, *args):
            phases[id(backend.sessions[graph])].append(phase[0])
            return step(graph, *args)

        backend.step = tagged
        ids, mask = left_pad(np.random.default_rng(0).integers(3, manifest.model.vocab_size, (1, prompt_len)).tolist(), 0)
        prefill(backend, ids[:, :8], mask[:, :8])
        phase[0] = "prefill"
        for _ in range(repeats):
            logits, state = prefill(backend, ids, mask)
        token = logits.argmax(-1)[:, None].astype(np.int64)
        phase[0] = "decode"
        for _ in range(steps):
            mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
            logits, state = backend.step("decode", token, mask, state)
            token = logits.argmax(-1)[:, None].astype(np.int64)
        # one session serves both step kinds in a one-graph artifact (step.onnx): its runs are told apart by phase
        events = {
            key: json.loads(Path(session.end_profiling()).read_text())
            for key, session in {id(s): s for s in backend.sessions.values()}.items()
        }
        return {
            name: _summary(events, phases, name, top, per_run=repeats if name == "prefill" else steps) for name in ("prefill", "decode")
        }


def _summary(events: dict, phases: dict, name: str, top: int, per_run: int) -> dict:
    """Per-op-type kernel time per prefill (all its pieces) or decode step (ms), share of the kernels'
    total, and model_run time per prefill or step, over the runs of phase `name`."""
    by_op, total, run_us = collections.Counter(), 0, 0
    for key, session_events in events.items():
        runs = sorted((e for e in session_events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
        mine = [r for r, tag in zip(runs, phases[key]) if tag == name]
        run_us += sum(r["dur"] for r in mine)
        for e in session_events:
            if (
                e.get("cat") == "Node"
                and e["name"].endswith("_kernel_time")
                and any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in mine)
            ):
                by_op[e["args"]["op_name"]] += e["dur"]
                total += e["dur"]
    n = max(1, per_run)
    return {
        "model_run_ms": run_us / n / 1e3,
        "kernels_ms": total / n / 1e3,
        "top": [(op, us / n / 1e3, us / max(total, 1)) for op, us in by_op.most_common(top)],
    }


def render(results: dict, args) -> str:
    lines = [
        f"# Where an onnxruntime step spends its time ({datetime.date.today()})",
        "",
        f"`python benchmarks/profile_onnxruntime.py` on the 2-core CPU development machine (threads as labelled; unlabelled: onnxruntime's default, 2), one run: onnxruntime's "
        f"profiler, prefill of {args.prompt_len} tokens, {args.steps} decode steps. Times are per run with the profiler "
        "on (it adds a cost per node): compare shares and ratios.",
        "",
    ]
    for graph in ("decode", "prefill"):
        lines += [f"## {graph}", ""]
        for label, r in results.items():
            s = r[graph]
            ops = ", ".join(f"{op} {100 * share:.0f} % ({ms:.1f} ms)" for op, ms, share in s["top"])
            lines.append(f"- **{label}**: {s['model_run_ms']:.1f} ms per run ({s['kernels_ms']:.1f} ms in kernels): {ops}")
        lines.append("")
    lines += ["```json", json.dumps(results, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+", help="LABEL=ARTIFACT_DIR")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--threads", default=None, help="comma-separated thread counts, each profiled (default: onnxruntime's own)")
    ap.add_argument("--out", default="benchmarks/results/profile_onnxruntime_cpu.md")
    args = ap.parse_args()
    results = {}
    for threads in [int(t) for t in args.threads.split(",")] if args.threads else [None]:
        for item in args.artifacts:
            label, _, path = item.partition("=")
            label += f", {threads} thread{'s' if threads > 1 else ''}" if threads else ""
            print(f"profiling {label}", file=sys.stderr)
            results[label] = profile(Path(path), args.prompt_len, args.steps, args.repeats, args.top, threads)
    Path(args.out).write_text(render(results, args))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
