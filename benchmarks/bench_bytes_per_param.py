"""Bytes per parameter of int8 / int4 artifacts, before and after a change, with where they go
(the embedding, the routed experts, the rest), for the benchmark model and the Nemotron-3-Nano-30B-A3B
widths (bench_export's 6-layer case).

    python benchmarks/bench_bytes_per_param.py --baseline-rev REV --workdir /tmp/nd-scratch
        [--cases bench,nano30b-6] [--out benchmarks/results/bytes_per_param.md]

Writes one random checkpoint at a time (the Nano-30B widths: ~7 GB in bfloat16), exports it with this
tree and with `--baseline-rev` at each precision, reads every initializer's bytes from the graph, and
deletes each artifact and checkpoint as soon as its rows are written. Parameters are counted as
transformers counts them (the manifest's num_parameters).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from baseline import baseline_env
from bench_export import NANO30B
from bench_vs_transformers import CONFIG as BENCH
from bench_vs_transformers import cli, cpu_name

from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

CASES = {
    "bench": ("benchmark model (537 M)", BENCH, "float32"),
    "nano30b-6": ("Nano-30B widths, 6 layers", dict(NANO30B, hybrid_override_pattern="MEM*ME"), "bfloat16"),
}
PRECISIONS = ("int8", "int4")
MiB = 2**20


def shares(artifact: Path) -> dict:
    """weights.data bytes by what they hold: the embedding table, the routed experts, the rest."""
    import onnx

    manifest = json.loads((artifact / "manifest.json").read_text())
    graph = next(g["file"] for g in manifest["graphs"].values())
    model = onnx.load(str(artifact / graph), load_external_data=False)
    out = {"embedding": 0, "experts": 0, "rest": 0}
    for tensor in model.graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        if "length" not in info:
            continue
        kind = "embedding" if tensor.name.startswith("embeddings.") else "experts" if ".experts_" in tensor.name else "rest"
        out[kind] += int(info["length"])
    total = (artifact / "weights.data").stat().st_size
    return {"parameters": manifest["model"]["num_parameters"], "weights_bytes": total, **out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-rev", required=True)
    ap.add_argument("--cases", default="bench,nano30b-6")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/results/bytes_per_param.md")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-bpp-") as tmp:
        work = Path(tmp)
        envs = {"before": baseline_env(work, args.baseline_rev), "after": None}
        for case in args.cases.split(","):
            label, config, dtype = CASES[case]
            ckpt = write_random_checkpoint(work / "ckpt", config=config, dtype=dtype, shard_bytes=4 * 2**30)
            for precision in PRECISIONS:
                for revision, env in envs.items():
                    artifact = work / "artifact"
                    cli("export", ckpt, "-o", artifact, "--quantize", precision, env=env)
                    rows.append({"model": label, "precision": precision, "revision": revision, **shares(artifact)})
                    print(json.dumps(rows[-1]), flush=True)
                    shutil.rmtree(artifact)
            shutil.rmtree(ckpt)
    Path(args.out).write_text(render(rows, args.baseline_rev))
    print(Path(args.out).read_text())


def render(rows: list[dict], rev: str) -> str:
    lines = [
        f"# Bytes per parameter of quantized artifacts ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu_name()}. `python benchmarks/bench_bytes_per_param.py --baseline-rev {rev}`: random checkpoints, one export "
        f"each; 'before' is revision {rev}'s exporter, 'after' this tree's. Shares of weights.data: the embedding table (and its "
        "scales), the routed experts (integers and scales), the rest (every other matrix, lm_head included, norms, conv, SSM).",
        "",
        "| model | precision | revision | parameters | weights.data MiB | bytes/param | embedding | experts | rest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        total = r["weights_bytes"]
        share = lambda key: f"{r[key] / MiB:.0f} MiB ({r[key] / total:.0%})"  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['revision']} | {r['parameters'] / 1e9:.2f} B | {total / MiB:.0f} | "
            f"{total / r['parameters']:.2f} | {share('embedding')} | {share('experts')} | {share('rest')} |"
        )
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
