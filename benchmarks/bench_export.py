"""Export at scale: seconds, peak memory, graph size and onnxruntime load cost, at real model widths.

Cases (each checkpoint random, written by `write_random_checkpoint`; each export and each onnxruntime
session creation in a fresh child process that samples its own memory, `export_profile`):

  bench-537m   the 537M-parameter model of bench_vs_transformers.py (64 experts, float32 on disk),
               exported to onnxruntime float32 by this tree AND by a baseline revision (default: the
               exporter before streaming, 66d5600), side by side in one run
  nano30b-6    Nemotron-3-Nano-30B-A3B's widths and expert count (hidden 2688, 128 experts top-6,
               expert width 1856, shared expert 3712, 64 Mamba heads x 64, 8 groups, state 128, vocab
               131072) with 6 layers M E M * M E, bfloat16 on disk; onnxruntime and tensorrt targets,
               float32 and float16. Extrapolated to the full 52 layers (23 M, 23 E, 6 *)
  h4b          Nemotron-H-4B's full depth and widths (52 layers M - M - ... with 4 attention layers,
               hidden 3072, MLP 12288, 112 Mamba heads), bfloat16 on disk, onnxruntime float32
  demo         the `demo` command's model (TINY_CONFIG, 7 layers), onnxruntime float32 (its aim: 10 s)

nano30b-6, h4b and demo export with --baseline-rev too, alternated (not with --no-baseline).

Usage: python benchmarks/bench_export.py [--cases bench-537m,nano30b-6,h4b] [--baseline-rev REV]
       [--workdir DIR] [--out benchmarks/results/export.md] [--quantize int8|int4]

--quantize: nano30b-6, h4b and demo export only onnxruntime at that precision (not opened here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from nemotron_deploy.exporter.config import LAYER_LETTERS, ModelConfig
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from baseline import baseline_env
from bench_vs_transformers import CONFIG as BENCH_537M
from bench_vs_transformers import cpu_name as _cpu
from export_profile import ChildFailed, profile_export, profile_session

TRACE_CACHE = False  # --trace-cache: also measure each export of this tree again with the trace cache warm

NANO30B = dict(
    TINY_CONFIG,
    vocab_size=131072,
    hidden_size=2688,
    num_attention_heads=32,
    num_key_value_heads=2,
    head_dim=128,
    mamba_num_heads=64,
    mamba_head_dim=64,
    n_groups=8,
    ssm_state_size=128,
    conv_kernel=4,
    chunk_size=128,
    n_routed_experts=128,
    num_experts_per_tok=6,
    moe_intermediate_size=1856,
    moe_shared_expert_intermediate_size=3712,
    n_group=1,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    max_position_embeddings=262144,
)
NANO30B_FULL_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"  # 23 M, 23 E, 6 *
H4B = dict(
    TINY_CONFIG,
    vocab_size=131072,
    hidden_size=3072,
    intermediate_size=12288,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    mamba_num_heads=112,
    mamba_head_dim=64,
    n_groups=8,
    ssm_state_size=128,
    conv_kernel=4,
    chunk_size=128,
    max_position_embeddings=8192,
    hybrid_override_pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
)
KIND = {letter: kind for kind, letter in LAYER_LETTERS.items()}
GiB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="bench-537m,nano30b-6,h4b")
    ap.add_argument("--baseline-rev", default="66d5600")
    ap.add_argument("--workdir", default=".", help="where checkpoints and artifacts go (tens of GB for the large cases)")
    ap.add_argument("--out", default="benchmarks/results/export.md")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    ap.add_argument("--smoke", action="store_true", help="tiny widths: checks the script, measures nothing of interest")
    ap.add_argument("--render", default=None, help="only write the report from the raw figures of an earlier --json")
    ap.add_argument("--no-open", action="store_true", help="skip opening the artifacts on onnxruntime (export seconds only)")
    ap.add_argument("--no-baseline", action="store_true", help="nano30b-6 and h4b: this tree only (bench-537m always compares)")
    ap.add_argument("--trace-cache", action="store_true", help="also this tree's re-export with the trace cache warm (a row per export)")
    ap.add_argument(
        "--quantize", choices=("int8", "int4"), default=None, help="nano30b-6, h4b, demo: only the onnxruntime export at this precision"
    )
    args = ap.parse_args()
    if args.render:
        return _write_report(json.loads(Path(args.render).read_text()), args)
    cases = args.cases.split(",")
    results: dict = {}
    global NANO30B, H4B, BENCH_537M
    if args.smoke:
        tiny = dict(
            vocab_size=256,
            hidden_size=64,
            num_key_value_heads=2,
            intermediate_size=128,
            mamba_num_heads=8,
            mamba_head_dim=8,
            ssm_state_size=16,
            head_dim=16,
            num_attention_heads=4,
            moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=32,
        )
        NANO30B, H4B, BENCH_537M = dict(NANO30B, **tiny), dict(H4B, **tiny, hybrid_override_pattern="M-*M"), dict(BENCH_537M, **tiny)
    rev = None if args.no_baseline else args.baseline_rev
    global TRACE_CACHE
    TRACE_CACHE = args.trace_cache
    quantized = [("onnxruntime", "float32", args.quantize)] if args.quantize else None
    runs = {
        "bench-537m": lambda work: bench_537m(work, args.baseline_rev, not args.no_open),
        "nano30b-6": lambda work: run_case(
            work,
            "nano30b-6",
            dict(NANO30B, hybrid_override_pattern="MEM*ME"),
            quantized or [("onnxruntime", "float32"), ("onnxruntime", "float16"), ("tensorrt", "float32"), ("tensorrt", "float16")],
            rev,
            not args.no_open,
        ),
        "h4b": lambda work: run_case(work, "h4b", H4B, quantized or [("onnxruntime", "float32")], rev, not args.no_open),
        "demo": lambda work: run_case(work, "demo", TINY_CONFIG, quantized or [("onnxruntime", "float32")], rev, not args.no_open),
    }
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-export-") as tmp:
        for case in cases:
            results[case] = runs[case](Path(tmp)) | {"measured": f"{datetime.date.today()}"}
            if args.json:  # after each case, so a long run keeps what it measured
                Path(args.json).write_text(json.dumps(results, indent=1))
    _write_report(results, args)


def _write_report(results: dict, args) -> None:
    report = render(results, args.baseline_rev)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


def bench_537m(work: Path, rev: str, open_sessions: bool = True) -> dict:
    """Both revisions at float32 and int4, alternated, and the disk's own bandwidth in the same run."""
    ckpt = write_random_checkpoint(work / "ckpt-537m", config=BENCH_537M)
    out = {"checkpoint_gib": _size(ckpt) / GiB, "pattern": BENCH_537M["hybrid_override_pattern"], "exports": {}}
    envs = {"baseline": baseline_env(work, rev), "this tree": None}
    for quantize in (None, "int4"):
        for label, env in envs.items():
            artifact = work / f"537m-{label.replace(' ', '-')}"
            measured = profile_export(ckpt, artifact, env=env, quantize=quantize)
            # a quantized artifact's first open builds its pre-packed cache: benchmarks/bench_memory.py measures opens
            if not open_sessions:
                measured["session"] = {"skipped": "--no-open"}
            else:
                measured["session"] = profile_session(artifact, env=env) if quantize is None else {"skipped": "quantized (bench_memory.py)"}
            out["exports"][f"{label} {quantize or 'float32'}"] = measured
            shutil.rmtree(artifact)
        if TRACE_CACHE:
            out["exports"][f"this tree {quantize or 'float32'}, trace cache warm"] = _warm_export(ckpt, work, quantize=quantize)
    out["disk"] = disk_bandwidth(ckpt, work, _largest_weights(out["exports"]))
    shutil.rmtree(ckpt)
    return out


def _warm_export(ckpt: Path, work: Path, **options) -> dict:
    """This tree's export of `ckpt` with the trace cache holding its graphs (exporter/trace_cache.py): a
    first export fills a cache folder of its own, the second is measured; the folder is deleted."""
    cache, artifact = work / "trace-cache", work / "warm-export"
    try:
        profile_export(ckpt, artifact, trace_cache=cache, **options)
        shutil.rmtree(artifact)
        measured = profile_export(ckpt, artifact, trace_cache=cache, **options)
        measured.setdefault("session", {"skipped": "the same artifact as above"})
        return measured
    finally:
        shutil.rmtree(artifact, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def _largest_weights(exports: dict) -> int:
    return int(max(m["weights_mb"] for m in exports.values()) * 2**20)


def disk_bandwidth(ckpt: Path, work: Path, write_bytes: int = 2 * GiB, block: int = 64 * 2**20) -> dict:
    """MB/s of this machine's disk as an export sees it: the checkpoint's files read sequentially in
    `block`s (as they were just read, partly from the page cache), and `write_bytes` written in `block`s
    twice: through the page cache (no fsync: what exports before 2026-12-07 did) and with O_DIRECT as
    exporter/append_file.py writes weights.data now. Pass the export's own weights.data size: the kernel
    takes the first few GB of a buffered write into its page cache at memory speed (dirty_ratio) and the
    rest at the disk's sustained rate, so a smaller probe overstates it. Also SHA-256 MB/s on one core:
    the export hashes every byte it writes, a CPU floor beside the disk's."""
    import hashlib
    import time

    from nemotron_deploy.exporter.append_file import AppendFile

    start = time.perf_counter()
    read = 0
    for path in sorted(ckpt.glob("*.safetensors")):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(block):
                read += len(chunk)
    read_s = time.perf_counter() - start
    data = os.urandom(block)
    seconds = {}
    for mode in ("buffered", "direct"):
        start = time.perf_counter()
        if mode == "buffered":
            with open(work / "disk-probe", "wb") as f:
                for _ in range(write_bytes // block):
                    f.write(data)
        else:
            out = AppendFile(work / "disk-probe")
            for _ in range(write_bytes // block):
                out.write(data)
            out.close()
        seconds[mode] = time.perf_counter() - start
        (work / "disk-probe").unlink()
    start = time.perf_counter()
    for _ in range(8):
        hashlib.sha256(data)
    sha_s = time.perf_counter() - start
    return {
        "read_mb_s": read / read_s / 1e6,
        "write_mb_s": write_bytes / seconds["buffered"] / 1e6,
        "write_direct_mb_s": write_bytes / seconds["direct"] / 1e6,
        "direct": out.direct,
        "sha256_mb_s": 8 * block / sha_s / 1e6,
        "checkpoint_bytes": read,
        "write_bytes": write_bytes,
    }


def run_case(work: Path, name: str, config: dict, exports: list[tuple], rev: str | None = None, open_sessions: bool = True) -> dict:
    """Each export (target, dtype[, quantize]) by `rev` (when given: the baseline, before this tree's,
    alternated) and by this tree; the disk's bandwidth measured after them. A quantized artifact is not
    opened here (its first open builds the pre-packed cache: benchmarks/bench_memory.py measures opens)."""
    ckpt = write_random_checkpoint(work / f"ckpt-{name}", config=config, dtype="bfloat16", shard_bytes=4 * GiB)
    cfg = ModelConfig.from_hf(config)
    result = {
        "checkpoint_gib": _size(ckpt) / GiB,
        "pattern": config["hybrid_override_pattern"],
        "largest_tensor_mib": _largest_tensor(ckpt) / 2**20,
        "exports": {},
    }
    envs = {"this tree": None} if rev is None else {f"baseline {rev}": baseline_env(work, rev), "this tree": None}
    for target, dtype, *quantize in exports:
        quantize = quantize[0] if quantize else None
        for label, env in envs.items():
            artifact = work / f"{name}-{target}-{dtype}"
            measured = profile_export(ckpt, artifact, target=target, dtype=dtype, env=env, quantize=quantize)
            measured["per_layer_kind"] = per_layer_kind(measured["timings"], cfg.layer_types)
            if target == "onnxruntime":
                measured["session"] = (
                    _open_on_onnxruntime(artifact, dtype, measured["weights_mb"] * 2**20)
                    if open_sessions and env is None and quantize is None
                    else {"skipped": "--no-open" if not open_sessions else "baseline" if env is not None else "quantized (bench_memory.py)"}
                )
            result["exports"][f"{target} {quantize or dtype}" + ("" if rev is None else f", {label}")] = measured
            shutil.rmtree(artifact)
        if TRACE_CACHE:
            warm = _warm_export(ckpt, work, target=target, dtype=dtype)
            warm["per_layer_kind"] = per_layer_kind(warm["timings"], cfg.layer_types)
            warm["session"] = {"skipped": "the same artifact as above"}
            result["exports"][f"{target} {dtype}, this tree, trace cache warm"] = warm
    result["disk"] = disk_bandwidth(ckpt, work, _largest_weights(result["exports"]))
    shutil.rmtree(ckpt)
    return result


def per_layer_kind(timings: dict, layer_types) -> dict:
    """Mean export seconds per layer of each kind: weight streaming plus the layer's share of the work
    that grows with depth.

    A whole-model trace (revisions before exporter/stitch.py) grows with depth: its time is shared out
    in proportion to the time the tracer's Python pass spent in each layer. A stitched export traces one
    layer per kind whatever the depth (a fixed cost, not shared out); its stitch and graph passes grow
    with the node count and are shared out evenly.
    """
    seconds = [0.0] * len(layer_types)
    for graph in ("prefill", "decode", "step"):  # step: the one graph of an onnxruntime float32 export
        if f"{graph}.stitch" in timings:
            for i in range(len(layer_types)):
                seconds[i] += (timings[f"{graph}.stitch"] + timings.get(f"{graph}.passes", 0.0)) / len(layer_types)
        else:
            # a graph traced in the exporter's second process has no per-layer record: use prefill's shares
            python = timings.get(f"{graph}.trace_layers") or timings.get("prefill.trace_layers", [1.0] * len(layer_types))
            total = sum(python) or 1.0
            for i, share in enumerate(python):
                seconds[i] += timings.get(f"{graph}.trace", 0.0) * share / total
        for i, s in enumerate(timings.get(f"{graph}.weights_layers", [])):
            seconds[i] += s
    kinds: dict[str, list[float]] = {}
    for kind, s in zip(layer_types, seconds):
        kinds.setdefault(kind, []).append(s)
    return {kind: sum(v) / len(v) for kind, v in kinds.items()}


def _open_on_onnxruntime(artifact: Path, dtype: str, weights_bytes: float) -> dict:
    """ORT open figures, or why they are missing. onnxruntime's CPU provider keeps float32 copies of
    float16 weights (measured: 914 MiB of anonymous memory for 393 MiB of float16 weights), so a float16
    artifact needs about 2.3x its weights in memory; float32 weights stay memory-mapped."""
    import resource

    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]  # `prlimit --data`, which the child inherits
    if limit != resource.RLIM_INFINITY and limit < available:
        available = limit
    if dtype == "float16" and 2.5 * weights_bytes > available:
        return {
            "skipped": f"float16 copies to float32 at load: needs ~{2.5 * weights_bytes / GiB:.0f} GiB, {available / GiB:.0f} GiB allowed"
        }
    try:
        return profile_session(artifact)
    except ChildFailed as e:
        return {"skipped": str(e).splitlines()[0]}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def _largest_tensor(ckpt: Path) -> int:
    from nemotron_deploy.exporter.safetensors_mmap import list_tensors

    return max(t.end - t.begin for t in list_tensors(ckpt).values())


def render(results: dict, rev: str) -> str:
    lines = [
        f"# Export at scale ({datetime.date.today()})",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores, {_mem_gib():.0f} GiB, no GPU. `python benchmarks/bench_export.py`; every export and",
        "every opening on onnxruntime (both graphs' sessions, weights memory-mapped, as the runtime does: 'ORT open')",
        "ran in a fresh child process sampling its own /proc/self/status every 5 ms.",
        "Peak anonymous memory (RssAnon) is what can run a machine out of memory; peak RSS adds file pages (the",
        "memory-mapped checkpoint, reclaimable). Both are increases over the child's baseline after imports.",
        "",
    ]
    if "bench-537m" in results:
        r = results["bench-537m"]
        lines += [
            f"## Before and after: the 537M benchmark model ({r['pattern']}, 64 experts, {r['checkpoint_gib']:.2f} GiB float32 on disk), onnxruntime float32 and int4",
            "",
            f"Baseline: revision {rev}, same machine, same run, exports alternated.",
            "",
            *_header("exporter"),
        ]
        for label, m in r["exports"].items():
            lines.append(_row(label, m))
        lines += ["", *_split(r), ""]
    titles = (
        ("nano30b-6", "Nemotron-3-Nano-30B-A3B widths, 6 layers"),
        ("h4b", "Nemotron-H-4B, full depth and widths"),
        ("demo", "The demo's model (TINY_CONFIG)"),
    )
    for key, title in titles:
        if key not in results:
            continue
        r = results[key]
        lines += [
            f"## {title} ({r['pattern']}, {r['checkpoint_gib']:.1f} GiB bfloat16 on disk, largest tensor {r['largest_tensor_mib']:.0f} MiB)"
            + (f"; measured {r['measured']}" if "measured" in r else ""),
            "",
            *_header("target dtype"),
        ]
        for label, m in r["exports"].items():
            lines.append(_row(label, m))
        lines += ["", *_split(r), ""]
        lines += [
            "",
            "Export seconds per layer (weight streaming + the layer's share of what grows with depth: a whole-model trace; a stitched export's stitch and passes):",
            "",
        ]
        kinds = [KIND[k] for k in "ME*-" if KIND[k] in next(iter(r["exports"].values()))["per_layer_kind"]]
        lines += ["| target dtype | " + " | ".join(kinds) + " |"]
        lines += ["| --- " * (len(kinds) + 1) + "|"]
        for label, m in r["exports"].items():
            lines.append(f"| {label} | " + " | ".join(f"{m['per_layer_kind'][k]:.1f}" for k in kinds) + " |")
        lines.append("")
        if key == "nano30b-6":
            lines += _extrapolate(r), ""
    return "\n".join(lines) + "\n"


def _extrapolate(r: dict) -> str:
    counts = {KIND[c]: NANO30B_FULL_PATTERN.count(c) for c in "ME*"}
    parts = []
    for label, m in r["exports"].items():
        per = m["per_layer_kind"]
        layer_s = sum(per[k] * n for k, n in counts.items())
        fixed = m["seconds"] - sum(per[KIND[c]] for c in r["pattern"])  # embedding, head, checks, manifest
        weights_gib = m["weights_mb"] / 1024
        full_gib = weights_gib / _pattern_params(r["pattern"]) * _pattern_params(NANO30B_FULL_PATTERN)
        parts.append(f"{label}: ~{(layer_s + fixed) / 60:.0f} min, weights.data ~{full_gib:.0f} GiB")
    return (
        "Extrapolated to the full Nemotron-3-Nano-30B-A3B (52 layers: 23 mamba, 23 moe, 6 attention) from the per-layer "
        "seconds above plus this export's fixed part; peak memory does not grow with layers or weights (it is set by the "
        "largest tensor block, see above): " + "; ".join(parts) + "."
    )


def _pattern_params(pattern: str) -> float:
    """Parameters of a Nano-30B-width model with this pattern (for scaling weights.data)."""
    import torch

    from nemotron_deploy.exporter.modeling.model import NemotronHStepModel

    with torch.device("meta"):
        model = NemotronHStepModel(ModelConfig.from_hf(dict(NANO30B, hybrid_override_pattern=pattern)))
    return float(sum(p.numel() for p in model.parameters()))


def _split(r: dict) -> list[str]:
    """Where each export's seconds went, against what the disk alone needs (read the checkpoint once,
    write weights.data once, at the bandwidths measured in the same run) and what hashing alone needs."""
    disk = r.get("disk")
    lines = [
        "Time split (s): trace (torch.onnx; a graph traced in a second process meanwhile counts only the wait for it),",
        "stitch + passes (copying the traced layers, exporter/stitch.py, and the graph passes; '-': counted in trace by",
        "revisions before the stitch), weights (streamed, converted, written, hashed), other (hashing the other files,",
        "checks, manifest)" + (f"; {_disk_line(disk)}" if disk else "") + ".",
        "Weights' threads (s, from revisions that report them): make (read the checkpoint's map, convert, lay out: the",
        "exporting thread), hash (SHA-256, a second thread), write (a third thread), wait (the exporting thread waiting",
        "for the other two); on 2 cores the three share the machine.",
        "",
        "| exporter | export s | trace | stitch + passes | weights | weights' threads: make / hash / write / wait | other | disk alone: read + write s | export / disk alone | SHA-256 alone s |",
        "| --- " * 10 + "|",
    ]
    for label, m in r["exports"].items():
        t = m["timings"]
        # a graph traced in the exporter's second process overlaps the rest: only the wait for it counts
        waits = {k.split(".")[0]: v for k, v in t.items() if k.endswith("waiting for its trace in a second process")}
        trace = sum(v for k, v in t.items() if k.endswith(".trace") and k.split(".")[0] not in waits) + sum(waits.values())
        weights = sum(v for k, v in t.items() if k.endswith(".weights"))
        passes = sum(v for k, v in t.items() if k.endswith((".stitch", ".passes")) and k.split(".")[0] not in waits)
        threads = " / ".join(f"{t[f'weights.{part}']:.1f}" for part in ("make", "hash", "write", "wait")) if "weights.make" in t else "-"
        floor = ratio = sha = "-"
        if disk:
            write_mb_s = max(disk["write_mb_s"], disk.get("write_direct_mb_s", 0.0))
            seconds = disk["checkpoint_bytes"] / (disk["read_mb_s"] * 1e6) + m["weights_mb"] * 2**20 / (write_mb_s * 1e6)
            floor, ratio = f"{seconds:.1f}", f"{m['seconds'] / seconds:.1f}x"
            sha = f"{m['weights_mb'] * 2**20 / (disk['sha256_mb_s'] * 1e6):.1f}" if "sha256_mb_s" in disk else "-"
        shown = f"{passes:.1f}" if any(k.endswith(".passes") for k in t) else "-"
        other = m["seconds"] - trace - passes - weights
        lines.append(
            f"| {label} | {m['seconds']:.1f} | {trace:.1f} | {shown} | {weights:.1f} | {threads} | {other:.1f} | {floor} | {ratio} | {sha} |"
        )
    return lines


def _disk_line(disk: dict) -> str:
    size = f" ({disk['write_bytes'] / GiB:.1f} GiB, the largest weights.data of the case)" if "write_bytes" in disk else ""
    line = (
        f"the disk, measured in the same run: read {disk['read_mb_s']:.0f} MB/s, write {disk['write_mb_s']:.0f} MB/s through the page cache"
    )
    if "write_direct_mb_s" in disk:
        line += f", {disk['write_direct_mb_s']:.0f} MB/s with O_DIRECT{'' if disk['direct'] else ' (refused: buffered)'}"
    line += size + "; disk alone takes the faster write"
    if "sha256_mb_s" in disk:
        line += f"; SHA-256 on one core {disk['sha256_mb_s']:.0f} MB/s"
    return line


def _header(first: str) -> list[str]:
    columns = [
        first,
        "export s",
        "peak anon MiB",
        "peak RSS MiB",
        "weights.data MiB",
        "nodes prefill / decode",
        "ORT open s",
        "ORT open peak anon / RSS MiB",
    ]
    return ["| " + " | ".join(columns) + " |", "| --- " * len(columns) + "|"]


def _row(label: str, m: dict) -> str:
    session = m.get("session") or {"skipped": "not an onnxruntime artifact"}
    s_time = f"{session['seconds']:.1f}" if "seconds" in session else f"not run: {session['skipped']}"
    s_mem = f"{session['peak_anon_mb']:.0f} / {session['peak_rss_mb']:.0f}" if "seconds" in session else "-"
    return (
        f"| {label} | {m['seconds']:.0f} | {m['peak_anon_mb']:.0f} | {m['peak_rss_mb']:.0f} | {m['weights_mb']:.0f} | "
        f"{m['nodes']['prefill']} / {m['nodes']['decode']} | {s_time} | {s_mem} |"
    )


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemTotal")) / 2**20


if __name__ == "__main__":
    main()
