"""Another revision against this tree on one random checkpoint, side by side in one run: are the artifacts,
the tokens and the decode speed the same? (For a change meant to leave behaviour alone.)

    python benchmarks/compare_revision.py --baseline-rev 3bb17f1 --out benchmarks/results/structure_pass_cpu.md

Per target (and onnxruntime float32 with --quantize int8 / int4): manifests equal as JSON apart from the creation time, the source path and the .onnx sizes and
hashes; weights.data byte-identical; each graph file byte-identical, or else its non-Constant nodes (op, domain,
name, order), inputs, outputs and external initializers equal, or else the same computation node for node
(exporter/graph_equivalence.py, after common-subexpression elimination of both, node names aside); `generate` tokens equal (greedy batch, and
sampled with chunked prefill). Then `bench` alternated between the two, `--rounds` times.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from baseline import baseline_env
from bench_vs_transformers import cpu_name

TARGETS = (
    ("onnxruntime", "float32"),
    ("onnxruntime", "float16"),
    ("tensorrt", "float32"),
    ("tensorrt", "bfloat16"),
    ("tensorrt-rtx", "float16"),
)
QUANTIZED = ("int8", "int4")  # onnxruntime float32 with --quantize (block 16: the tiny widths)
GREEDY = ["--prompt-ids", "5,6,7,8,9,10,11", "--prompt-ids", "12,13,14", "--max-new-tokens", "24", "--ignore-eos", "--json"]
SAMPLED = [
    "--prompt-ids",
    "5,6,7,8,9,10,11",
    "--max-new-tokens",
    "16",
    "--temperature",
    "0.8",
    "--top-k",
    "20",
    "--seed",
    "4",
    "--ignore-eos",
    "--json",
    "--prefill-chunk",
    "3",
]


def cli(env, *args) -> str:
    done = subprocess.run([sys.executable, "-m", "nemotron_deploy.runtime.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"nemotron-deploy {' '.join(map(str, args))} failed: {done.stderr.strip()[-600:]}")
    return (done.stdout.strip().splitlines() or [""])[-1]  # the JSON line of generate / bench


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _graph(path: Path):
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    nodes = [(n.op_type, n.domain, n.name) for n in g.node if n.op_type != "Constant"]
    return nodes, [i.name for i in g.input], [o.name for o in g.output], sorted(i.name for i in g.initializer if i.data_location == 1)


def _equivalent(old: Path, new: Path) -> str:
    """Whether two graph files compute the same thing node for node (exporter/graph_equivalence.py), each
    after common-subexpression elimination (a revision may have run it, onnxruntime runs it at load)."""
    import onnx
    import onnx_ir as ir

    from nemotron_deploy.exporter.graph_equivalence import signature
    from nemotron_deploy.exporter.stitch import eliminate_common_subexpressions

    signatures, counts = [], []
    for path in (old, new):
        model = ir.serde.deserialize_model(onnx.load(str(path), load_external_data=False))
        counts.append(len(list(model.graph)))
        _merge_equal_constants(model)
        eliminate_common_subexpressions(model)
        signatures.append(signature(model, modules=False))
    differences = signatures[0].differences(signatures[1])
    return f"DIFFERENT: {differences[0][:300]}" if differences else f"equivalent ({counts[0]} -> {counts[1]} nodes)"


def _merge_equal_constants(model) -> None:
    """Small in-file initializers with equal contents made one (a revision that folded constants before
    eliminating common subexpressions kept equal computations on distinct, equal constants)."""
    import onnx_ir as ir

    seen = {}
    for name, value in list(model.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or isinstance(tensor, ir.ExternalTensor) or tensor.size > 4096:
            continue
        array = tensor.numpy()
        key = (str(array.dtype), array.shape, array.tobytes())
        if key in seen and value not in model.graph.outputs:
            ir.convenience.replace_all_uses_with(value, seen[key])
        else:
            seen.setdefault(key, value)


def _weights(artifact: Path) -> dict[str, str]:
    """{initializer name: SHA-256 of its bytes in weights.data} over the artifact's graph files."""
    import onnx

    with open(artifact / "weights.data", "rb") as data:
        digests = {}
        for path in sorted(artifact.glob("*.onnx")):
            for tensor in onnx.load(str(path), load_external_data=False).graph.initializer:
                info = {e.key: e.value for e in tensor.external_data}
                if info:
                    data.seek(int(info["offset"]))
                    digests[f"{path.name}:{tensor.name}"] = hashlib.sha256(data.read(int(info["length"]))).hexdigest()
    return digests


def _manifest(artifact: Path) -> dict:
    raw = json.loads((artifact / "manifest.json").read_text())
    for key in ("created", "source"):
        raw["exporter"].pop(key)
    raw["files"] = [f for f in raw["files"] if not f["name"].endswith(".onnx")]
    return raw


def compare_target(work: Path, ckpt: Path, envs: dict, target: str, dtype: str, quantize: str | None = None) -> dict:
    arts = {}
    for name, env in envs.items():
        arts[name] = work / f"{name}-{target}-{dtype}{'-' + quantize if quantize else ''}"
        cli(
            env,
            "export",
            ckpt,
            "-o",
            arts[name],
            "--target",
            target,
            "--dtype",
            dtype,
            *(["--quantize", quantize, "--block-size", "16"] if quantize else []),
        )
    old, new = arts["baseline"], arts["this tree"]
    result = {
        "manifest_equal": _manifest(old) == _manifest(new),
        "weights_data_identical": _sha(old / "weights.data") == _sha(new / "weights.data"),
    }
    if not result["weights_data_identical"]:  # the same tensors at other offsets?
        result["weights_equal_by_initializer"] = _weights(old) == _weights(new)
    graphs = sorted(p.name for p in old.glob("*.onnx"))  # prefill.onnx and decode.onnx, or one step.onnx
    if graphs != sorted(p.name for p in new.glob("*.onnx")):
        result["graphs"] = f"DIFFERENT files: {graphs}"
    for graph in graphs:
        same_bytes = _sha(old / graph) == _sha(new / graph)
        if same_bytes:
            result[graph] = "byte-identical"
        else:
            result[graph] = (
                "same nodes, names, I/O" if _graph(old / graph) == _graph(new / graph) else _equivalent(old / graph, new / graph)
            )
    # the reference backend runs float32/float16 plugin graphs; tensorrt-rtx needs its engines
    backend = {"onnxruntime": "onnxruntime", "tensorrt": "reference"}.get(target)
    if backend and dtype != "bfloat16":
        for label, args in (("greedy_tokens_equal", GREEDY), ("sampled_tokens_equal", SAMPLED)):
            outs = [cli(env, "generate", arts[name], *args, "--backend", backend) for name, env in envs.items()]
            result[label] = outs[0] == outs[1]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-rev", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/compare_revision.md")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        envs = {"baseline": baseline_env(work, args.baseline_rev), "this tree": dict(os.environ)}
        ckpt = work / "checkpoint"
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint; write_random_checkpoint({str(ckpt)!r}, seed=3)",
            ],
            check=True,
        )
        targets = {f"{t} {d}": compare_target(work, ckpt, envs, t, d) for t, d in TARGETS}
        targets |= {f"onnxruntime float32 {q}": compare_target(work, ckpt, envs, "onnxruntime", "float32", q) for q in QUANTIZED}
        bench = {name: [] for name in envs}
        for _ in range(args.rounds):
            for name, env in envs.items():
                out = json.loads(
                    cli(
                        env,
                        "bench",
                        work / f"{name}-onnxruntime-float32",
                        "--prompt-len",
                        "64",
                        "--new-tokens",
                        "32",
                        "--threads",
                        "2",
                        "--json",
                    )
                )
                bench[name].append({k: out[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_bytes_per_token")})
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
        "baseline": args.baseline_rev,
        "this_tree": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    report = {"meta": meta, "targets": targets, "bench_onnxruntime_float32": bench}
    Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    Path(args.out).write_text(_markdown(report))
    print(_markdown(report))


def _markdown(report: dict) -> str:
    m = report["meta"]
    lines = [
        f"# {m['baseline']} against {m['this_tree']}: artifacts, tokens, speed",
        "",
        f"{m['date']}, {m['machine']}; random TINY_CONFIG checkpoint (seed 3); `benchmarks/compare_revision.py`.",
        "",
        "| target | manifest equal | weights.data | graphs | greedy tokens | sampled tokens |",
        "| --- " * 6 + "|",
    ]
    for name, r in report["targets"].items():
        graphs = r.get("graphs") or ", ".join(f"{g}: {r[g]}" for g in r if g.endswith(".onnx"))
        cells = [
            r["manifest_equal"],
            "byte-identical"
            if r["weights_data_identical"]
            else f"other bytes; every initializer's equal: {r.get('weights_equal_by_initializer', '-')}",
            graphs,
            r.get("greedy_tokens_equal", "-"),
            r.get("sampled_tokens_equal", "-"),
        ]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    bench = report["bench_onnxruntime_float32"]
    old, new = bench["baseline"], bench["this tree"]
    lines += [
        "",
        "`bench` (onnxruntime float32, prompt 64, 32 new tokens, 2 threads), alternated; ratio = this tree / baseline:",
        "",
        "| round | decode tok/s baseline | this tree | ratio | prefill tok/s baseline | this tree | ratio |",
        "| --- " * 7 + "|",
    ]
    for i, (o, n) in enumerate(zip(old, new)):
        d, p = n["decode_tokens_per_s"] / o["decode_tokens_per_s"], n["prefill_tokens_per_s"] / o["prefill_tokens_per_s"]
        lines.append(
            f"| {i + 1} | {o['decode_tokens_per_s']:.0f} | {n['decode_tokens_per_s']:.0f} | {d:.2f} | {o['prefill_tokens_per_s']:.0f} | {n['prefill_tokens_per_s']:.0f} | {p:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
