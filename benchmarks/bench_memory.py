"""Memory of open + prefill + decode on onnxruntime's CPU provider, before/after in one run, and at real scale.

    python benchmarks/bench_memory.py [--baseline-rev REV] [--cases bench,real-scale,serve] [--workdir DIR]
        [--real-scale-baseline REV] [--out benchmarks/results/memory_cpu.md] [--json FILE]

bench: the benchmark checkpoint of bench_vs_transformers.py, exported by a baseline revision and by
this tree at float32, int8 and int4; each artifact opened in a fresh process (benchmarks/memory_child.py,
the revision's own runtime) at prompt 128 and 4000, the two revisions interleaved per configuration;
then a second process opening the artifact while a first holds it (what `serve --instances 2` costs).
Quantized artifacts of this tree build their pre-packed cache on a first open, which is timed apart.
real-scale: Nemotron-H-4B (full depth and widths) int8 and int4, and the 6-layer case of
Nemotron-3-Nano-30B-A3B widths int4, random bfloat16 checkpoints, each exported, opened twice (the first
open builds the cache) and opened twice more, generating (this tree; with --real-scale-baseline REV
that revision too, its later opens alternating with this tree's). One model at a time: each checkpoint
and artifact is deleted after its rows. Needs ~20 GB of disk in --workdir (~35 GB with a baseline).
serve: `serve --instances 2`'s repository in a real tritonserver at float32 and int4 (this tree), each
process's PSS, RSS and anonymous memory after two concurrent streams.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from baseline import baseline_env
from bench_export import H4B, NANO30B
from bench_vs_transformers import CONFIG as BENCH
from bench_vs_transformers import cpu_name

CHILD = Path(__file__).parent / "memory_child.py"
PRECISIONS = {"float32": (), "int8": ("--quantize", "int8"), "int4": ("--quantize", "int4")}
PROMPTS = (128, 4000)
GiB = 2**30


def cli(*args, env=None) -> None:
    done = subprocess.run([sys.executable, "-m", "nemotron_deploy.runtime.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"nemotron-deploy {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")


def child(artifact: Path, prompt_len: int, new_tokens: int, env=None, hold: bool = False):
    """memory_child.py's JSON (and, with hold, the still running process)."""
    cmd = [sys.executable, str(CHILD), str(artifact), "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens)] + (
        ["--hold"] * hold
    )
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate()
        how = "was killed (out of memory?)" if proc.returncode == -9 else f"exited with {proc.returncode}"
        return {"failed": f"{how}: {(err.strip().splitlines() or [''])[-1][:200]}"}, None
    if not hold:
        proc.wait()
        return json.loads(line), None
    return json.loads(line), proc


def bench_case(work: Path, rev: str) -> dict:
    ckpt = write_random_checkpoint(work / "ckpt-bench", config=BENCH)
    envs = {"before": baseline_env(work, rev), "after": None}
    artifacts = {}
    for label, env in envs.items():
        for precision, flags in PRECISIONS.items():
            artifacts[label, precision] = out = work / f"bench-{label}-{precision}"
            cli("export", ckpt, "-o", out, *flags, env=env)
    rows, builds = [], {}
    for precision in PRECISIONS:
        if PRECISIONS[precision]:  # this tree's first open of a quantized artifact packs its weights once
            builds[precision], _ = child(artifacts["after", precision], 8, 2)
            builds[precision]["cache_bytes"] = _cache_bytes(artifacts["after", precision])
        for prompt in PROMPTS:
            for label, env in envs.items():
                measured, _ = child(artifacts[label, precision], prompt, 32, env=env)
                rows.append(
                    {"revision": label, "precision": precision, "prompt": prompt, **measured, **_sizes(artifacts[label, precision])}
                )
    second = []
    for precision in ("float32", "int4"):
        for label, env in envs.items():
            first, holder = child(artifacts[label, precision], 128, 8, env=env, hold=True)
            other, _ = child(artifacts[label, precision], 128, 8, env=env)
            if holder is not None:
                holder.communicate("\n")
            second.append({"revision": label, "precision": precision, "first": first, "second": other})
    return {"checkpoint": BENCH, "rows": rows, "cache_builds": builds, "second_process": second}


def real_scale_case(work: Path, baseline_rev: str | None = None, rounds: int = 2) -> dict:
    """Each model and precision exported, its cache built by a first open, then `rounds` later opens
    (prompt 128, 16 new tokens). With `baseline_rev`, that revision exports and opens each too (its own
    runtime), its later opens alternating with this tree's, and each row names its revision."""
    cases = (
        ("Nemotron-H-4B", H4B, ("int8", "int4")),
        ("Nano-30B widths, 6 layers", dict(NANO30B, hybrid_override_pattern="MEM*ME"), ("int4",)),
    )
    envs = (
        {"this tree": None} if baseline_rev is None else {f"before ({baseline_rev})": baseline_env(work, baseline_rev), "this tree": None}
    )
    out = []
    for name, config, precisions in cases:
        ckpt = write_random_checkpoint(work / "ckpt-real", config=config, dtype="bfloat16", shard_bytes=4 * GiB)
        for precision in precisions:
            rows = {}
            for i, (label, env) in enumerate(envs.items()):
                artifact = work / f"real-artifact-{i}"
                cli("export", ckpt, "-o", artifact, *PRECISIONS[precision], env=env)
                rows[label] = {"model": name, "precision": precision, "revision": label, **_sizes(artifact), "artifact": artifact}
                if PRECISIONS[precision]:
                    rows[label]["cache_build"], _ = child(artifact, 8, 2, env=env)
                    rows[label]["cache_bytes"] = _cache_bytes(artifact)
            for _ in range(rounds):
                for label, env in envs.items():
                    measured, _ = child(rows[label]["artifact"], 128, 16, env=env)
                    rows[label].setdefault("later_opens", []).append(measured)
            for row in rows.values():
                shutil.rmtree(row.pop("artifact"))
                later = row["later_opens"]
                failed = [m for m in later if "failed" in m]
                row.update(failed[0] if failed else _combined(later))
                out.append(row)
        shutil.rmtree(ckpt)
    return {"rows": out, "rounds": rounds}


def _combined(opens: list[dict]) -> dict:
    """One row of several later opens: the largest of each memory peak and open time, the mean decode."""
    row = {k: max(m[k] for m in opens) for k in opens[0] if k.endswith("_mb") or k == "open_s"}
    row["decode_tokens_per_s"] = sum(m["decode_tokens_per_s"] for m in opens) / len(opens)
    row["decode_rounds"] = [round(m["decode_tokens_per_s"], 2) for m in opens]
    row["tokens"] = opens[0].get("tokens")
    row["same_tokens_every_open"] = all(m.get("tokens") == row["tokens"] for m in opens)
    return row


def serve_case(work: Path) -> dict:
    """`serve --instances 2` (the repository `serve` writes, run by TritonServer as `serve` runs it): the
    memory of the server and of each instance (a Python backend stub process) after two concurrent
    streams, one per instance, at float32 and int4."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "docs" / "examples"))
    import threading

    import numpy as np
    from triton_stream import stream

    from nemotron_deploy.runtime.serving.triton.server import TritonServer

    ckpt = write_random_checkpoint(work / "ckpt-serve", config=BENCH)
    rows = []
    for precision in ("float32", "int4"):
        artifact, repo = work / f"serve-{precision}", work / f"repo-{precision}"
        cli("export", ckpt, "-o", artifact, *PRECISIONS[precision])
        cli("triton", artifact, "-o", repo, "--instances", 2, "--max-batch", 1, "--threads", 1)  # builds an int4 artifact's cache
        with TritonServer(repo, log_file=work / "server.log") as server:
            prompts = np.random.default_rng(0).integers(3, BENCH["vocab_size"], (2, 128)).astype(np.int32)

            def client(i: int) -> None:
                one = lambda v, dtype: np.array([[v]], dtype=dtype)  # noqa: E731
                inputs = {
                    "input_ids": prompts[i : i + 1],
                    "request_output_len": one(16, np.int32),
                    "streaming": one(True, np.bool_),
                    "ignore_eos": one(True, np.bool_),
                }
                for _ in stream(server.endpoints.grpc_url, "tensorrt_llm", inputs, "output_ids", timeout=600):
                    pass

            threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            processes = [_process_memory(pid) for pid in _process_tree(server.process.pid)]
        rows.append({"precision": precision, **_sizes(artifact), "processes": processes})
        shutil.rmtree(artifact)
        shutil.rmtree(repo)
    shutil.rmtree(ckpt)
    return {"rows": rows}


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants (from /proc/*/stat's parent ids)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _process_memory(pid: int) -> dict:
    """A process's name, PSS (smaps_rollup), RSS and anonymous memory (status), in MiB."""
    proc = Path("/proc") / str(pid)
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    rollup = dict(line.split(":", 1) for line in (proc / "smaps_rollup").read_text().splitlines()[1:] if ":" in line)
    kib = lambda text: int(text.split()[0]) / 1024  # noqa: E731
    return {"name": status["Name"].strip(), "pss_mb": kib(rollup["Pss"]), "rss_mb": kib(status["VmRSS"]), "anon_mb": kib(status["RssAnon"])}


def _cache_bytes(artifact: Path) -> int:
    """Bytes of the pre-packed weights cache beside the artifact (this tree's default place)."""
    from nemotron_deploy.runtime.onnx_prepacked import stored_bytes

    return sum(stored_bytes(entry) for entry in (artifact / ".onnxruntime-cache").iterdir() if entry.is_dir())


def _sizes(artifact: Path) -> dict:
    manifest = json.loads((artifact / "manifest.json").read_text())
    weights = (artifact / "weights.data").stat().st_size
    return {
        "num_parameters": manifest["model"]["num_parameters"],
        "weights_bytes": weights,
        "bytes_per_parameter": weights / manifest["model"]["num_parameters"],
    }


def render(results: dict, rev: str) -> str:
    date = datetime.date.today().isoformat()
    lines = [
        f"# Memory of open + prefill + decode, onnxruntime CPU ({date})",
        "",
        f"Machine: {cpu_name()}, 2 threads, no GPU. `python benchmarks/bench_memory.py --cases {','.join(results)}`: one run; every "
        "configuration in a fresh process (benchmarks/memory_child.py)"
        + (f"; 'before' is revision {rev}'s export run by its own runtime, 'after' this tree's. " if "bench" in results else ". ")
        + "Memory over the process's baseline after its imports, except peak RSS (the whole process, VmHWM). "
        "Bounds (issue 31): peak PSS <= 1.15x weights.data + 128 MiB (the whole process, /proc/self/smaps_rollup sampled), "
        "peak anonymous <= 0.1x weights.data + 128 MiB (over the baseline).",
        "",
    ]
    bench = results.get("bench")
    if bench:
        lines += [
            "## The benchmark model (" + _params(bench["rows"][0]) + ", pattern " + bench["checkpoint"]["hybrid_override_pattern"] + ")",
            "",
            "| precision | prompt | revision | weights.data MiB | bytes/param | open s | prefill tok/s | decode tok/s | peak PSS MiB | x weights | PSS bound | peak RSS MiB | x weights | peak anon MiB | x weights | anon bound | tokens = before |",
            "| --- " * 17 + "|",
        ]
        before = {(r["precision"], r["prompt"]): r for r in bench["rows"] if r["revision"] == "before"}
        for r in bench["rows"]:
            lines.append(_row(r, before.get((r["precision"], r["prompt"]))))
        lines += [
            "",
            "First open of this tree's quantized artifacts (packs the weights once into the cache): "
            + ", ".join(
                f"{p} {b.get('open_s', 0):.1f} s (builder peak RSS {b.get('builder_peak_rss_mb', 0):.0f} MiB; cache "
                f"{b.get('cache_bytes', 0) / 2**20:.0f} MiB = {b.get('cache_bytes', 0) / 2**20 / b.get('weights_mb', 1):.2f}x weights.data)"
                for p, b in bench["cache_builds"].items()
            ),
            "",
        ]
        lines += [
            "### A second process opening the same artifact",
            "",
            "| precision | revision | first: peak anon MiB | second: peak anon MiB | second: open s | second: peak RSS MiB | second: peak PSS MiB |",
            "| --- " * 7 + "|",
        ]
        for s in bench["second_process"]:
            a, b = s["first"], s["second"]
            lines.append(
                f"| {s['precision']} | {s['revision']} | {a.get('peak_anon_mb', float('nan')):.0f} | {b.get('peak_anon_mb', float('nan')):.0f} | "
                f"{b.get('open_s', float('nan')):.2f} | {b.get('peak_rss_mb', float('nan')):.0f} | {b.get('peak_pss_mb') or float('nan'):.0f} |"
            )
        lines.append("")
    real = results.get("real-scale")
    if real:
        lines += [
            f"## Real scale ({real.get('revision', 'this tree')}; random bfloat16 checkpoints)",
            "",
            "| model | precision | revision | parameters | weights.data GiB | bytes/param | cache GiB | first open (builds the cache) s | "
            "first open: builder peak anon MiB | x weights | bound | later open s | decode tok/s (mean; rounds) | peak PSS GiB | x weights | "
            "bound | peak RSS GiB | x weights | peak anon MiB | x weights | bound | same tokens |",
            "| --- " * 22 + "|",
        ]
        for r in real["rows"]:
            w = r["weights_bytes"] / 2**20
            head = f"| {r['model']} | {r['precision']} | {r.get('revision', 'this tree')} | {r['num_parameters'] / 1e9:.2f} B | {w / 1024:.1f} | {r['bytes_per_parameter']:.2f} |"
            if "failed" in r:
                lines.append(head + f" | | | | | | {r['failed']} |" + " |" * 10)
                continue
            build = r.get("cache_build", {}).get("open_s")
            cache = r.get("cache_bytes")
            rounds = "; ".join(f"{d:.2f}" for d in r.get("decode_rounds", []))
            first = next((o for o in real["rows"] if o["model"] == r["model"] and o["precision"] == r["precision"] and "tokens" in o), r)
            same = "" if first is r else ("yes" if first.get("tokens") == r.get("tokens") else "no")
            lines.append(
                head
                + f" {'' if cache is None else f'{cache / 2**30:.1f}'} | {'' if build is None else f'{build:.0f}'} | {_builder_anon(r, w)} | "
                f"{r['open_s']:.1f} | {r['decode_tokens_per_s']:.2f}{f' ({rounds})' if rounds else ''} | {r['peak_pss_mb'] / 1024:.2f} | "
                f"{r['peak_pss_mb'] / w:.2f} | {'ok' if r['peak_pss_mb'] <= 1.15 * w + 128 else 'over'} | {r['peak_rss_mb'] / 1024:.2f} | "
                f"{r['peak_rss_mb'] / w:.2f} | {r['peak_anon_mb']:.0f} | {r['peak_anon_mb'] / w:.3f} | "
                f"{'ok' if r['peak_anon_mb'] <= 0.1 * w + 128 else 'over'} | {same} |"
            )
        done = [r for r in real["rows"] if "failed" not in r]
        lines += [
            "",
            "Where the anonymous peak is: during the open (onnxruntime packs each weight again to check it against the "
            "cache's blob, then frees it): "
            + ", ".join(
                f"{r['model']} {r['precision']} ({r.get('revision', 'this tree')}) {r['open_peak_anon_mb']:.0f} MiB during the open, {r['open_anon_mb']:.0f} MiB after it"
                for r in done
            )
            + ". First open (builds the cache in a child process): builder peak RSS "
            + ", ".join(f"{r['cache_build'].get('builder_peak_rss_mb', 0) / 1024:.1f} GiB" for r in done if "cache_build" in r)
            + ".",
        ]
        lines.append("")
    served = results.get("serve")
    if served:
        lines += [
            f"## `serve --instances 2` ({served.get('revision', 'this tree')}; the benchmark model; after two concurrent 128 + 16-token streams, one per instance)",
            "",
            "| precision | weights.data MiB | process | PSS MiB | RSS MiB | anonymous MiB |",
            "| --- " * 6 + "|",
        ]
        for r in served["rows"]:
            w = r["weights_bytes"] / 2**20
            for p in r["processes"]:
                lines.append(f"| {r['precision']} | {w:.0f} | {p['name']} | {p['pss_mb']:.0f} | {p['rss_mb']:.0f} | {p['anon_mb']:.0f} |")
            total = {k: sum(p[k] for p in r["processes"]) for k in ("pss_mb", "rss_mb", "anon_mb")}
            lines.append(
                f"| {r['precision']} | {w:.0f} | all ({total['pss_mb'] / w:.2f}x weights.data in PSS) | {total['pss_mb']:.0f} | {total['rss_mb']:.0f} | {total['anon_mb']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n```json\n" + json.dumps(results, indent=1) + "\n```\n"


def _builder_anon(row: dict, weights_mb: float) -> str:
    """'peak MiB | x weights | ok/over' of the first open's cache build (issue 31's bound for it: 1.1x
    weights.data + 256 MiB); blank cells for a row measured before the builder was sampled."""
    peak = row.get("cache_build", {}).get("builder_peak_anon_mb")
    if peak is None:
        return " | | "
    return f"{peak:.0f} | {peak / weights_mb:.2f} | {'ok' if peak <= 1.1 * weights_mb + 256 else 'over'}"


def _params(row: dict) -> str:
    return f"{row['num_parameters'] / 1e6:.0f} M parameters"


def _row(r: dict, before: dict | None) -> str:
    w = r["weights_bytes"] / 2**20
    head = f"| {r['precision']} | {r['prompt']} | {r['revision']} | {w:.0f} | {r['bytes_per_parameter']:.2f} |"
    if "failed" in r:
        return head + f" {r['failed']} |" + " |" * 12
    pss_ok = "ok" if r["peak_pss_mb"] <= 1.15 * w + 128 else "over"
    anon_ok = "ok" if r["peak_anon_mb"] <= 0.1 * w + 128 else "over"
    same = "" if before is None or r is before or "tokens" not in before else ("yes" if before["tokens"] == r["tokens"] else "no")
    return (
        head + f" {r['open_s']:.2f} | {r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | {r['peak_pss_mb']:.0f} | "
        f"{r['peak_pss_mb'] / w:.2f} | {pss_ok} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / w:.2f} | "
        f"{r['peak_anon_mb']:.0f} | {r['peak_anon_mb'] / w:.2f} | {anon_ok} | {same} |"
    )


def _this_revision() -> str:
    """This tree's commit, marked where the package or the benchmarks differ from it."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    changed = subprocess.run(
        ["git", "status", "--porcelain", "exporter", "runtime", "plugins", "benchmarks"], capture_output=True, text=True
    ).stdout
    return rev + (" with uncommitted changes" if changed.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-rev", default="5d83f1e")
    ap.add_argument("--cases", default="bench,real-scale")
    ap.add_argument("--real-scale-baseline", default=None, help="real-scale: also export and open each case with this revision")
    ap.add_argument("--workdir", default=None, help="where checkpoints and artifacts go (default: a temporary directory)")
    ap.add_argument("--out", default="benchmarks/results/memory_cpu.md")
    ap.add_argument("--json", default=None, help="also write the raw figures here (after each case)")
    ap.add_argument("--render", default=None, help="only write the report from an earlier --json")
    args = ap.parse_args()
    if args.render:
        results = json.loads(Path(args.render).read_text())
    else:
        results, revision = {}, _this_revision()
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-memory-") as tmp:
            for case in args.cases.split(","):
                work = Path(tmp) / case
                work.mkdir()
                results[case] = {
                    "bench": lambda: bench_case(work, args.baseline_rev),
                    "real-scale": lambda: real_scale_case(work, args.real_scale_baseline),
                    "serve": lambda: serve_case(work),
                }[case]()
                results[case]["revision"] = f"revision {revision}, {datetime.date.today().isoformat()}"
                shutil.rmtree(work)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
    report = render(results, args.baseline_rev)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
