"""The first open of a quantized artifact on a machine: building its pre-packed cache entry, two ways of
the builder (`python -m nemotron_deploy.runtime.onnx_prepacked`) side by side in one run on the same
artifacts. `--builds` picks them from BUILDS: `folded` opens the artifact's graph as it is and packs in one
session (onnxruntime folds the experts' repeated rows in memory: the build before runtime/repeated_rows.py);
`one-session` writes those rows to a file first and packs in one session (the build before
runtime/prepack_parts.py); `parts` is this tree's (rows written out, packed part by part).

    python benchmarks/bench_cache_build.py [--cases bench-537m,nano30b-6 (or h4b)] [--precisions int4,int8]
                                           [--builds one-session,parts] [--rounds 3] [--workdir DIR]
                                           [--out benchmarks/results/cache_build_cpu.md]

Per case: one random checkpoint, exported per precision by this tree (`nemotron-deploy export`, a child process); then, `--rounds` times, the builds
alternated, each in a fresh process into a folder of its own, with its seconds and its peak anonymous
memory and RSS (the child's /proc/PID/status, sampled every 2 ms from outside; the lowest round is
reported); the two entries compared by content (`onnx_prepacked.entry_content`). Each checkpoint and
artifact is deleted once its rows are written. Issue 31's bound for this open: peak anonymous <= 1.1x
weights.data + 256 MiB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import H4B, NANO30B
from bench_vs_transformers import CONFIG as BENCH_537M
from bench_vs_transformers import cpu_name

from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.runtime import onnx_prepacked, repeated_rows
from nemotron_deploy.runtime.artifact.manifest import read_manifest

MiB = 2**20
CASES = {
    "bench-537m": ("the 537M benchmark model (MEMEM*EMEMEM*E, 64 experts of width 512)", BENCH_537M, "float32"),
    "h4b": ("Nemotron-H-4B, full depth and widths (no MoE: no repeated rows)", H4B, "bfloat16"),
    "nano30b-6": (
        "Nemotron-3-Nano-30B-A3B widths, 6 layers (MEM*ME, 128 experts of width 1856)",
        dict(NANO30B, hybrid_override_pattern="MEM*ME"),
        "bfloat16",
    ),
}
SMOKE = dict(
    TINY_CONFIG,
    hidden_size=128,
    moe_intermediate_size=128,
    moe_shared_expert_intermediate_size=64,
    intermediate_size=128,
    n_routed_experts=16,
    num_experts_per_tok=2,
)
BUILDS = {  # name: (the builder's flags, what it is)
    "folded": (("--as-is", "--one-session"), "repeated rows folded in memory, one session"),
    "one-session": (("--one-session",), "repeated rows written out, one session"),
    "parts": ((), "repeated rows written out, packed part by part (this tree)"),
}


def build(graph: Path, out: Path, flags: tuple[str, ...]) -> dict:
    """The builder with `flags` in a fresh process into `out`: seconds, peak anonymous memory and RSS (MiB)."""
    out.mkdir()
    os.sync()  # the writes before it (the export, the previous build) reach the disk first, not during it
    cmd = [sys.executable, "-m", "nemotron_deploy.runtime.onnx_prepacked", str(graph), str(out), *flags]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    peak = {"RssAnon": 0, "VmRSS": 0}
    while child.poll() is None:
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"build of {graph} failed ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_anon_mb": peak["RssAnon"] / 1024, "peak_rss_mb": peak["VmRSS"] / 1024}


def serve_from_each_build(artifact: Path, work: Path, rounds: int, builds: list[str]) -> dict:
    """`nemotron-deploy bench` (prompt 64, 16 new tokens, 2 threads) of `artifact` opened from a cache entry
    made by each build, alternated `rounds` times: {build: {"decode_tokens_per_s", "prefill_tokens_per_s",
    "peak_pss_mb", "peak_anon_mb"}}, the best round of each speed and the lowest of each peak."""
    manifest = read_manifest(artifact)
    key = onnx_prepacked.cache_key(manifest, "step.onnx")
    roots = {name: work / f"cache-{name}" for name in builds}
    for name in builds:
        roots[name].mkdir()
        onnx_prepacked._build(manifest, "step.onnx", roots[name] / f"step-{key}", key, BUILDS[name][0])
    runs = {name: [] for name in builds}
    for _ in range(rounds):
        for name, root in roots.items():
            args = [
                "bench",
                str(artifact),
                "--prompt-len",
                "64",
                "--new-tokens",
                "16",
                "--threads",
                "2",
                "--json",
                "--cache-dir",
                str(root),
            ]
            done = subprocess.run([sys.executable, "-m", "nemotron_deploy.runtime.cli", *args], check=True, capture_output=True, text=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for root in roots.values():
        shutil.rmtree(root)
    best = {"decode_tokens_per_s": max, "prefill_tokens_per_s": max, "peak_pss_mb": min, "peak_anon_mb": min}
    return {name: {k: pick(r[k] for r in measured) for k, pick in best.items()} for name, measured in runs.items()}


def _packed_count(entry: Path) -> int:
    """How many of the entry's initializers onnxruntime packed (a tensor it could not fold is not one)."""
    model = onnx_prepacked.load_model(entry / onnx_prepacked.MODEL_FILE)
    return sum(any(e.key.startswith("prepacked") for e in t.external_data) for t in model.graph.initializer)


def run_case(work: Path, case: str, precisions: list[str], builds: list[str], rounds: int, smoke: bool, serve: bool) -> list[dict]:
    label, config, dtype = CASES[case]
    work.mkdir(parents=True)
    ckpt = write_random_checkpoint(work / "ckpt", config=SMOKE if smoke else config, dtype=dtype)
    rows = []
    for precision in precisions:
        artifact = work / precision  # exported in a child process: the checkpoint's maps leave with it
        subprocess.run(
            [sys.executable, "-m", "nemotron_deploy.runtime.cli", "export", str(ckpt), "-o", str(artifact), "--quantize", precision],
            check=True,
            capture_output=True,
        )
        graph = artifact / "step.onnx"
        weights = (artifact / "weights.data").stat().st_size / MiB
        runs = {name: [] for name in builds}
        same = entry_mb = packed = None
        for r in range(rounds):
            entries = []
            for name in builds:
                entries.append(work / f"entry-{precision}-{r}-{name}")
                runs[name].append(build(graph, entries[-1], BUILDS[name][0]))
            if same is None:  # the first round's entries, compared; then every entry goes (tens of GB at scale)
                first = onnx_prepacked.entry_content(entries[0])
                same = all(onnx_prepacked.entry_content(entry) == first for entry in entries[1:])
                entry_mb = {name: onnx_prepacked.stored_bytes(entry) / MiB for name, entry in zip(builds, entries)}
                packed = {name: _packed_count(entry) for name, entry in zip(builds, entries)}
            for entry in entries:
                shutil.rmtree(entry)
        served = serve_from_each_build(artifact, work, min(rounds, 2), builds) if serve else {}
        for name, measured in runs.items():
            rows.append(
                {
                    "case": case,
                    "model": label,
                    "precision": precision,
                    "build": name,
                    "weights_mb": weights,
                    "repeated_mb": repeated_rows.repeated_bytes(onnx_prepacked.load_model(graph).graph) / MiB,
                    "entry_mb": entry_mb[name],
                    "seconds": min(m["seconds"] for m in measured),
                    "peak_anon_mb": min(m["peak_anon_mb"] for m in measured),
                    "peak_rss_mb": min(m["peak_rss_mb"] for m in measured),
                    "rounds": measured,
                    "same_entry": same,
                    "packed_weights": packed[name],
                    "served": served.get(name),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds"}), flush=True)
        shutil.rmtree(artifact)
    shutil.rmtree(ckpt)
    return rows


def render(rows: list[dict], args) -> str:
    lines = [
        f"# Building the pre-packed cache: the first open of a quantized artifact ({datetime.date.today()})",
        "",
        f"Machine: {cpu_name()}, no GPU. `python benchmarks/bench_cache_build.py --builds {args.builds}`: one run, {args.rounds} rounds "
        "alternating the builds (each a fresh process building into a folder of its own; the lowest round of each figure). "
        + " ".join(f"'{name}': {BUILDS[name][1]}." for name in args.builds.split(","))
        + " Peak anonymous memory and RSS of "
        "the build's process (/proc/PID/status sampled every 2 ms; the disk synced before each build). Bound (issue 31): peak anonymous <= 1.1x "
        "weights.data + 256 MiB. 'packed weights': the initializers onnxruntime packed (a repeated tensor it did not fold "
        "is not one: onnxruntime 1.32 skips folding an output over 1 GiB, and that layer's QMoE then repeats and reads its "
        "rows unpacked at every step). 'same entry': every build saved the same nodes, initializer bytes and packed blobs. "
        "'served': `nemotron-deploy bench` (prompt 64, 16 new tokens, 2 threads) of the artifact opened from a cache entry "
        "made by that build, alternated twice (best speed, lowest peak).",
        "",
        "| model | precision | build | weights.data MiB | repeated rows MiB | entry on disk MiB | build s | peak anon MiB | x weights | bound | peak RSS MiB | packed weights | same entry | served: decode / prefill tok/s | served: peak PSS / anon MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        bound = "ok" if r["peak_anon_mb"] <= 1.1 * r["weights_mb"] + 256 else "over"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['build']} | {r['weights_mb']:.0f} | {r['repeated_mb']:.0f} | {r['entry_mb']:.0f} | "
            f"{r['seconds']:.1f} | {r['peak_anon_mb']:.0f} | {r['peak_anon_mb'] / r['weights_mb']:.2f} | {bound} | {r['peak_rss_mb']:.0f} | {r['packed_weights']} | "
            f"{'yes' if r['same_entry'] else 'NO'} | {_served(r['served'])} |"
        )
    lines += ["", "```json", json.dumps(rows, indent=1), "```"]
    return "\n".join(lines) + "\n"


def _served(served: dict | None) -> str:
    if not served:
        return "- | -"
    return f"{served['decode_tokens_per_s']:.1f} / {served['prefill_tokens_per_s']:.0f} | {served['peak_pss_mb']:.0f} / {served['peak_anon_mb']:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="bench-537m,nano30b-6")
    ap.add_argument("--precisions", default="int4,int8")
    ap.add_argument("--builds", default="one-session,parts", help=f"which of {','.join(BUILDS)}, in this order each round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where checkpoints and artifacts go (nano30b-6 writes ~20 GB, h4b ~35 GB)")
    ap.add_argument("--out", default="benchmarks/results/cache_build_cpu.md")
    ap.add_argument("--no-serve", action="store_true", help="skip `bench` of the artifact opened from each build's entry")
    ap.add_argument("--smoke", action="store_true", help="tiny widths: checks the script, measures nothing of interest")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-build-", dir=args.workdir) as tmp:
        for case in args.cases.split(","):
            rows += run_case(
                Path(tmp) / case, case, args.precisions.split(","), args.builds.split(","), args.rounds, args.smoke, not args.no_serve
            )
            Path(args.out).write_text(render(rows, args))  # after each case: a later one may fail
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
