"""Where a step's CPU time goes, thread by thread: Linux `perf` samples onnxruntime's decode loop and its
prefill of an artifact, and each sample is put in a class by the code it hit.

onnxruntime's library has no symbols, so the classes come from reference runs sampled the same way
(benchmarks/probe_onnxruntime_cpu.py's graphs): the code pages where a 2-thread session's worker waits
for work (a chain of small single-threaded nodes: `nodes_graph`), the pages of the weight kernels
(one-token MatMulNBits, or float32 MatMul, at the artifact's precision: `weights_graph`), and what
LinearAttention alone spends in copies (`scan_graph`). Per thread, each class is a share of the wall
time sampled (samples / (frequency x seconds)): a thread asleep is not sampled, so a row need not add up
to 100 %.

Usage: python benchmarks/perf_step_cpu.py ARTIFACT_DIR [ARTIFACT_DIR ...] [--threads 2] [--seconds 5]
       [--out FILE]
Needs `perf` (linux-perf) and permission to sample this user's processes (root, or
kernel.perf_event_paranoid <= 2).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_transformers import cpu_name

FREQUENCY = 999  # samples per second and thread
CLASSES = ("weight kernels", "waiting for work", "copies (memcpy)", "libm (exp)", "other onnxruntime", "python", "rest")
PROMPT = 128  # decode steps follow a prompt of this many tokens
PREFILL = 512  # tokens of one sampled prefill call
_SAMPLE = re.compile(r"^\s*(\d+)/(\d+)\s+([0-9a-f]+)\s+(.+?)\s+\((.+)\)\s*$")  # pid/tid ip symbol (dso)
_MMAP = re.compile(r"PERF_RECORD_MMAP2 (\d+)/\d+: \[0x([0-9a-f]+)\(0x[0-9a-f]+\) @ 0x([0-9a-f]+) .*\]: r-xp (\S+)")


def _child(mode: str, target: str, threads: int, seconds: float, control: Path) -> None:
    """The sampled work, with sampling on only around its loop (perf's control fifo)."""
    run, read = (_step_loop(mode, target, threads), 0) if mode in ("decode", "prefill") else _reference(mode, target, threads)
    ctl, ack = open(control / "ctl", "w"), open(control / "ack")

    def command(word: str) -> None:
        ctl.write(word + "\n")
        ctl.flush()
        ack.readline()

    run()  # warm
    steps, start = 0, time.perf_counter()
    command("enable")
    while time.perf_counter() - start < seconds:
        run()
        steps += 1
    elapsed = time.perf_counter() - start
    command("disable")
    figures = {"calls": steps, "seconds": elapsed, "ms_per_call": elapsed / steps * 1e3}
    if read:
        figures["gb_per_s"] = read * steps / elapsed / 1e9
    print(json.dumps(figures), flush=True)


def _reference(mode: str, bits: str, threads: int):
    """One call of a reference graph (probe_onnxruntime_cpu.py) in a session of `threads` threads, and the
    bytes of weights a call reads."""
    import onnx
    import onnxruntime as ort
    import probe_onnxruntime_cpu as probes

    model, feeds = {
        "idle": lambda: probes.nodes_graph(),
        "weights": lambda: probes.weights_graph(None if bits == "float32" else int(bits.removeprefix("int"))),
        "weights-prefill": lambda: probes.weights_graph(None if bits == "float32" else int(bits.removeprefix("int")), tokens=PREFILL),
        "scan": lambda: probes.scan_graph(),
    }[mode]()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if bits == "float32":  # as the backend opens float32 artifacts (their MatMuls run on the stored layout)
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(model, options)
    read = sum(len(t.raw_data) for t in onnx.load_from_string(model).graph.initializer)
    return (lambda: session.run(None, feeds)), read


def _step_loop(kind: str, artifact: str, threads: int):
    """One call of `kind`, batch 1: a decode step (greedy) after a `PROMPT`-token prompt, the states carried
    from step to step, or a `PREFILL`-token prefill from the initial state."""
    import numpy as np

    from nemotron_deploy.runtime.artifact.manifest import read_manifest
    from nemotron_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    manifest = read_manifest(artifact)
    backend = OnnxRuntimeBackend(manifest, threads=threads)
    ids = np.random.default_rng(0).integers(3, manifest.model.vocab_size, (1, PREFILL))
    if kind == "prefill":
        return lambda: backend.step("prefill", ids, np.ones((1, PREFILL), np.int64), backend.initial_state(1))
    logits, state = backend.step("prefill", ids[:, :PROMPT], np.ones((1, PROMPT), np.int64), backend.initial_state(1))
    carried = {"token": logits.argmax(-1)[:, None], "state": state, "past": PROMPT}

    def step() -> None:
        mask = np.ones((1, carried["past"] + 1), np.int64)
        logits, carried["state"] = backend.step("decode", carried["token"], mask, carried["state"])
        carried["token"], carried["past"] = logits.argmax(-1)[:, None], carried["past"] + 1

    return step


def _sample(mode: str, target: str, threads: int, seconds: float) -> tuple[dict, list[tuple]]:
    """perf record of one child; its figures and its samples as (is main thread, where) with `where`
    (library, page) for onnxruntime's code and (library, symbol) elsewhere."""
    with tempfile.TemporaryDirectory(prefix="nd-perf-") as folder:
        folder = Path(folder)
        for name in ("ctl", "ack"):
            os.mkfifo(folder / name)
        data = folder / "perf.data"
        command = [sys.executable, __file__, "--child", mode, "--target", target, "--threads", str(threads), "--seconds", str(seconds)]
        command += ["--control", str(folder)]
        record = ["perf", "record", "-q", "-D", "-1", "--control", f"fifo:{folder / 'ctl'},{folder / 'ack'}", "-F", str(FREQUENCY)]
        done = subprocess.run([*record, "-o", str(data), "--", *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"perf record of {mode} failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "--show-mmap-events", "-F", "pid,tid,ip,sym,dso"], capture_output=True, text=True
        ).stdout
    maps, samples = [], []
    for line in script.splitlines():
        if m := _MMAP.search(line):
            maps.append((int(m[2], 16), int(m[3], 16), m[4]))
            continue
        if not (m := _SAMPLE.match(line)):
            continue
        pid, tid, ip, symbol, dso = int(m[1]), int(m[2]), int(m[3], 16), m[4], m[5]
        library = Path(dso).name
        if "onnxruntime" in library:
            start, offset = max(((s, o) for s, o, path in maps if Path(path).name == library and s <= ip), default=(0, 0))
            where = ("onnxruntime", (ip - start + offset) >> 12)
        else:
            where = (library, symbol)
        samples.append((pid == tid, where))
    return figures, samples


def _hot(samples: list[tuple], share: float, main: bool | None = None) -> set:
    """The onnxruntime pages with at least `share` of the samples (of the main thread, the workers, or all)."""
    picked = [where for is_main, where in samples if main is None or is_main == main]
    counts = collections.Counter(where for where in picked if where[0] == "onnxruntime")
    return {where for where, n in counts.items() if n >= share * len(picked)}


def _classify(where: tuple, waiting: set, weights: set) -> str:
    library, what = where
    if library == "onnxruntime":
        return "waiting for work" if where in waiting else "weight kernels" if where in weights else "other onnxruntime"
    if "memcpy" in what or "memmove" in what:
        return "copies (memcpy)"
    if library.startswith("libm."):
        return "libm (exp)"
    return "python" if library.startswith("libpython") else "rest"


def _shares(samples: list[tuple], seconds: float, waiting: set, weights: set) -> dict:
    """Per thread (the main thread, then each worker by its sample count), each class's share of wall time."""
    by_thread = {"main": [w for is_main, w in samples if is_main], "workers": [w for is_main, w in samples if not is_main]}
    rows = {}
    for thread, wheres in by_thread.items():
        counts = collections.Counter(_classify(w, waiting, weights) for w in wheres)
        threads = 1 if thread == "main" else max(1, round(len(wheres) / (FREQUENCY * seconds)))
        rows[thread] = {c: counts[c] / (FREQUENCY * seconds * threads) for c in CLASSES}
    return rows


def measure(artifacts: list[Path], threads: int, seconds: float) -> dict:
    from nemotron_deploy.runtime.artifact.manifest import read_manifest

    results = {}
    precisions = {a: f"int{q['bits']}" if (q := read_manifest(a).quantization) else "float32" for a in artifacts}
    idle = _sample("idle", "", threads, seconds)[1]
    waiting = _hot(idle, 0.01, main=False)
    scan_figures, scan = _sample("scan", "", threads, seconds)
    copies = sum(1 for _, where in scan if _classify(where, set(), set()) == "copies (memcpy)")
    results["LinearAttention alone"] = {"ms_per_layer": scan_figures["ms_per_call"] / 24, "copies_share_of_samples": copies / len(scan)}
    for artifact in artifacts:
        precision = precisions[artifact]
        weights_figures, weights_samples = _sample("weights", precision, threads, seconds)
        prefill_weights = _sample("weights-prefill", precision, threads, seconds)[1]
        weights = (_hot(weights_samples, 0.002) | _hot(prefill_weights, 0.002)) - waiting
        name = precision if artifact.name == precision else f"{artifact.name} ({precision})"
        results[name] = {"weights_reference_ms": weights_figures["ms_per_call"], "weights_reference_gb_per_s": weights_figures["gb_per_s"]}
        for kind in ("decode", "prefill"):
            figures, samples = _sample(kind, str(artifact), threads, seconds)
            results[name][kind] = {
                "ms_per_call": figures["ms_per_call"],
                "calls": figures["calls"],
                "threads": _shares(samples, figures["seconds"], waiting, weights),
            }
    return results


def report(results: dict, threads: int, seconds: float) -> str:
    lines = [
        f"# Where a step's CPU time goes ({datetime.date.today()})",
        "",
        f"`python benchmarks/perf_step_cpu.py ... --threads {threads} --seconds {seconds:g}`: {cpu_name()}, {threads} "
        f"onnxruntime threads, Linux perf at {FREQUENCY} Hz; one run. Each figure is a share of the wall time of "
        f"the sampled loop, per thread (a thread asleep is not sampled): decode steps (batch 1, after a {PROMPT}-token "
        f"prompt) and prefills of {PREFILL} tokens.",
        "",
        "| artifact | step | ms per call | thread | " + " | ".join(CLASSES) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in CLASSES) + " |",
    ]
    for name, result in results.items():
        for kind in ("decode", "prefill"):
            if kind not in result:
                continue
            for thread, shares in result[kind]["threads"].items():
                cells = " | ".join(f"{100 * shares[c]:.0f} %" for c in CLASSES)
                lines.append(f"| {name} | {kind} | {result[kind]['ms_per_call']:.2f} | {thread} | {cells} |")
    alone = results["LinearAttention alone"]
    rates = ", ".join(f"{name} {r['weights_reference_gb_per_s']:.1f} GB/s" for name, r in results.items() if "decode" in r)
    lines += [
        "",
        f"The weight kernels alone (`weights_graph`: one-token products on ~100 MiB of weights of their own, from memory, "
        f"{threads} threads, sampled as the steps are): {rates}.",
        "",
        f"LinearAttention alone (24 one-token updates of the benchmark model's state, {threads} threads): "
        f"{alone['ms_per_layer']:.3f} ms per layer, {100 * alone['copies_share_of_samples']:.0f} % of its samples in memcpy "
        "(its kernel copies the past state into the present one before it updates it, on one thread).",
        "",
        "```json",
        json.dumps(results, indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--control", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.target, args.threads, args.seconds, args.control)
        return
    if not args.artifacts:
        parser.error("give at least one artifact directory (nemotron-deploy export ...)")
    if shutil.which("perf") is None:
        sys.exit("perf_step_cpu.py needs Linux perf (apt-get install linux-perf)")
    from nemotron_deploy.runtime.artifact.manifest import ArtifactError

    try:
        results = measure(args.artifacts, args.threads, args.seconds)
    except (ArtifactError, RuntimeError) as e:  # an artifact that is not one; perf refused or failed
        sys.exit(f"perf_step_cpu.py: {e}")
    text = report(results, args.threads, args.seconds)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
