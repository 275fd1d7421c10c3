"""Resident memory of opening / loading a checkpoint: our memory-mapped loader vs safetensors' load_file.

Writes a random NemotronH checkpoint of about --size-mb megabytes (fp32), then in fresh processes
measures, after touching every weight once, the growth of anonymous memory (RssAnon: what copies
cost, cannot be evicted) and of file-backed resident memory (RssFile: page cache of the mapping,
evictable) after:
  inspect:    open_checkpoint (config + headers only)
  mmap-load:  load_model(dtype=float32), parameters are views of the file mapping
  load_file:  safetensors.torch.load_file (for comparison)
Usage: python benchmarks/load_memory.py [--size-mb 400] [--out benchmarks/results/load_memory.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
import torch  # import cost measured in the baseline too
base_anon, base_file = rss_kb("RssAnon"), rss_kb("RssFile")
mode, path = sys.argv[1], sys.argv[2]
if mode == "inspect":
    from nemotron_deploy.exporter.checkpoint import open_checkpoint
    obj = open_checkpoint(path)
elif mode == "mmap-load":
    from nemotron_deploy.exporter.checkpoint import load_model
    obj = load_model(path, "float32")
    total = sum(float(p.float().sum()) for p in obj.parameters())  # touch every weight once
else:
    from safetensors.torch import load_file
    obj = load_file(path + "/model.safetensors")
    total = sum(float(t.float().sum()) for t in obj.values())
print(json.dumps({"anon_mb": (rss_kb("RssAnon") - base_anon) / 1024, "file_mb": (rss_kb("RssFile") - base_file) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=400)
    ap.add_argument("--out", default="benchmarks/results/load_memory.md")
    args = ap.parse_args()
    from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint

    # hidden 1024, vocab sized to reach the requested checkpoint size with the tiny layer pattern
    config = dict(
        TINY_CONFIG,
        hidden_size=1024,
        intermediate_size=2048,
        mamba_num_heads=16,
        mamba_head_dim=64,
        head_dim=64,
        num_attention_heads=16,
        num_key_value_heads=4,
        moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=1024,
    )
    layers_mb = 40
    config["vocab_size"] = max(1024, int((args.size_mb - layers_mb) * 2**20 / 4 / 1024 / 2))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_checkpoint(Path(tmp) / "ckpt", config=config)
        size_mb = (path / "model.safetensors").stat().st_size / 2**20
        rows = []
        for mode in ("inspect", "mmap-load", "load_file"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=True)
            rows.append((mode, json.loads(out.stdout.strip().splitlines()[-1])))
    lines = [
        f"# Checkpoint load memory ({datetime.date.today()}, {platform.machine()}, {platform.node()}, CPU only)",
        "",
        f"Checkpoint: {size_mb:.0f} MiB fp32, one file. Figures are increases over a process that imported torch.",
        "Anonymous memory is what copies cost; file-backed memory is the mapping's page cache (evictable).",
        "inspect's growth is importing the package and building the model on the meta device (no tensor data);",
        "mmap-load adds the routed experts, stacked from per-expert tensors (one copy of those only).",
        "",
        "| mode | anonymous memory increase (MiB) | file-backed resident increase (MiB) |",
        "| --- | --- | --- |",
        *[f"| {mode} | {r['anon_mb']:.0f} | {r['file_mb']:.0f} |" for mode, r in rows],
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
