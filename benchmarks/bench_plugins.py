"""GPU benchmarks of the plugin kernels, side by side with their references, in one run.

  Mamba2Core decode (T = 1): effective bandwidth of the state update against the card's measured
      device-to-device copy bandwidth (the aim: >= 80 % at Nemotron-3-Nano-30B-A3B shapes).
  Mamba2Core prefill: tokens/s of the chunked-scan kernels against the torch reference on the same GPU.
  MoeDispatch: time of the plugin against a per-expert torch loop over the routed tokens (and the
      whole torch reference incl. routing), Nano-30B sizes, decode and prefill token counts.

    python benchmarks/bench_plugins.py [--plugins DIR_WITH_BUILD] [--out benchmarks/results/plugins_gpu.md]

Each plugin call goes through the TensorRT-like harness (createPlugin -> configure -> enqueue on device
buffers), timed with CUDA events over repeated enqueues. `--smoke` runs tiny shapes on the CPU
emulation only to check this script; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from nemotron_deploy.exporter.modeling.mlp import route, routed_experts_loop
from nemotron_deploy.exporter.plugin_ops import MAMBA2_CORE, MOE_DISPATCH, run_reference
from nemotron_deploy.plugins.build import build_plugins
from nemotron_deploy.plugins.harness import PluginHarness

# Nemotron-3-Nano-30B-A3B: mixer 64 heads x 64, 8 groups, state 128, conv 4, chunk 128; MoE 128 experts top-6,
# width 1856, hidden 2688, one router group, norm_topk_prob, scaling 2.5.
NANO = dict(H=64, P=64, G=8, S=128, K=4, L=128, X=128, k=6, I=1856, D=2688)


def timed(fn, device: torch.device, iters: int, warmup: int = 3) -> float:
    """Mean seconds per call."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def copy_bandwidth(device: torch.device, mib: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(mib << 18, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, iters=20)
    return 2 * src.numel() * 4 / seconds


def mamba_inputs(b, t, sizes, dtype, device):
    h, p, g, s, k = sizes["H"], sizes["P"], sizes["G"], sizes["S"], sizes["K"]
    c = h * p + 2 * g * s
    f32 = torch.float32
    return [
        torch.randn(b, t, c, device=device).to(dtype),
        torch.randn(b, t, h, device=device).to(dtype),
        torch.ones(b, t, device=device),
        torch.randn(b, c, k - 1, device=device).to(dtype),
        torch.randn(b, h, p, s, device=device, dtype=f32),
        (torch.randn(c, k, device=device) * 0.5).to(dtype),
        torch.zeros(c, device=device).to(dtype),
        (torch.randn(h, device=device) - 3).to(dtype),
        torch.log(torch.rand(h, device=device) * 15 + 1).to(dtype),
        torch.randn(h, device=device).to(dtype),
    ]


def mamba_attrs(sizes, decode: bool) -> dict:
    return dict(
        n_groups=sizes["G"],
        head_dim=sizes["P"],
        state_size=sizes["S"],
        chunk_size=sizes["L"],
        dt_min=0.0 if decode else 0.001,
        dt_max=math.inf,
    )


def bench_decode(harness, device, sizes, dtype, batches, copy_bw, iters):
    rows = []
    for b in batches:
        inputs = mamba_inputs(b, 1, sizes, dtype, device)
        launch = harness.create(MAMBA2_CORE, mamba_attrs(sizes, True)).prepare(inputs)
        seconds = timed(launch, device, iters)
        moved = sum(t.numel() * t.element_size() for t in inputs + launch.outputs)
        bw = moved / seconds
        rows.append(dict(batch=b, us=seconds * 1e6, bytes=moved, gbps=bw / 1e9, of_copy=bw / copy_bw))
    return rows


def bench_prefill(harness, device, sizes, dtype, lengths, iters):
    rows = []
    for t in lengths:
        inputs = mamba_inputs(1, t, sizes, dtype, device)
        attrs = mamba_attrs(sizes, False)
        launch = harness.create(MAMBA2_CORE, attrs).prepare(inputs)
        plugin_s = timed(launch, device, iters)
        with torch.no_grad():
            ref_s = timed(lambda: run_reference(MAMBA2_CORE, inputs, attrs), device, max(iters // 4, 1))
        rows.append(dict(tokens=t, plugin_tok_s=t / plugin_s, torch_tok_s=t / ref_s, speedup=ref_s / plugin_s))
    return rows


def bench_moe(harness, device, sizes, dtype, token_counts, iters):
    rows = []
    attrs = dict(top_k=sizes["k"], n_group=1, topk_group=1, norm_topk_prob=1, routed_scaling_factor=2.5)
    for n in token_counts:
        x, d, i = sizes["X"], sizes["D"], sizes["I"]
        inputs = [
            torch.randn(n, d, device=device).to(dtype),
            torch.randn(n, x, device=device),
            torch.randn(x, device=device) * 0.05,
            (torch.randn(x, i, d, device=device) / d**0.5).to(dtype),
            (torch.randn(x, d, i, device=device) / i**0.5).to(dtype),
        ]
        launch = harness.create(MOE_DISPATCH, attrs).prepare(inputs)
        plugin_s = timed(launch, device, iters)
        indices, weights = route(inputs[1], inputs[2], top_k=sizes["k"], n_group=1, topk_group=1, norm_topk_prob=True, scaling=2.5)
        with torch.no_grad():
            loop_s = timed(lambda: routed_experts_loop(inputs[0], indices, weights, inputs[3], inputs[4]), device, max(iters // 4, 1))
            ref_s = timed(lambda: run_reference(MOE_DISPATCH, inputs, attrs), device, max(iters // 4, 1))
        rows.append(
            dict(
                tokens=n,
                plugin_us=plugin_s * 1e6,
                loop_us=loop_s * 1e6,
                reference_us=ref_s * 1e6,
                vs_loop=loop_s / plugin_s,
                vs_reference=ref_s / plugin_s,
            )
        )
    return rows


def markdown(meta, results) -> str:
    lines = [
        f"# Plugin kernel benchmarks ({meta['device']}, {meta['date']})",
        "",
        f"Command: `{meta['command']}`. dtype {meta['dtype']}. Copy bandwidth measured: "
        f"{meta['copy_gbps']:.0f} GB/s (device-to-device, read + write).",
        "",
        "## Mamba2Core decode (T = 1), Nano-30B mixer sizes",
        "",
        "| batch | us/call | bytes moved | GB/s | of copy bandwidth |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['batch']} | {r['us']:.1f} | {r['bytes']:,} | {r['gbps']:.0f} | {r['of_copy']:.0%} |" for r in results["decode"]]
    lines += [
        "",
        "## Mamba2Core prefill, batch 1",
        "",
        "| tokens | plugin tokens/s | torch reference tokens/s | speedup |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['tokens']} | {r['plugin_tok_s']:,.0f} | {r['torch_tok_s']:,.0f} | {r['speedup']:.1f}x |" for r in results["prefill"]]
    lines += [
        "",
        "## MoeDispatch, Nano-30B MoE sizes",
        "",
        "| tokens | plugin us | per-expert torch loop us | torch reference (routing + loop) us | vs loop | vs reference |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['tokens']} | {r['plugin_us']:.0f} | {r['loop_us']:.0f} | {r['reference_us']:.0f} | {r['vs_loop']:.1f}x | {r['vs_reference']:.1f}x |"
        for r in results["moe"]
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugins", help="directory of an existing `plugins build` (default: build one now)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU emulation, to check the script")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.smoke:
        device, sizes = torch.device("cpu"), dict(H=4, P=8, G=2, S=16, K=4, L=8, X=8, k=2, I=24, D=16)
        batches, lengths, tokens, iters = [1, 2], [20], [1, 9], 2
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA GPU: these benchmarks need one (use --smoke to check the script)", file=sys.stderr)
            return 2
        device, sizes = torch.device("cuda"), NANO
        batches, lengths, tokens, iters = [1, 8, 32, 64, 128], [512, 2048, 8192], [1, 8, 64, 512, 2048], args.iters
    if args.plugins:
        root = Path(args.plugins)
        name = "libnemotron_deploy_plugins_emulated.so" if args.smoke else "libnemotron_deploy_plugins.so"
        harness = PluginHarness(root / "libnemotron_deploy_plugin_harness.so", root / name)
    else:
        arch = "".join(map(str, torch.cuda.get_device_capability())) if device.type == "cuda" else "80"
        built = build_plugins(tempfile.mkdtemp(prefix="ndp-bench-"), emulated=args.smoke, cuda_architectures=arch)
        harness = PluginHarness(built.harness, built.library)
    torch.manual_seed(0)
    copy_bw = copy_bandwidth(device, 16 if args.smoke else 1024)
    results = dict(
        decode=bench_decode(harness, device, sizes, dtype, batches, copy_bw, iters),
        prefill=bench_prefill(harness, device, sizes, dtype, lengths, max(iters // 5, 2)),
        moe=bench_moe(harness, device, sizes, dtype, tokens, max(iters // 5, 2)),
    )
    meta = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else f"CPU emulation ({platform.processor() or 'cpu'})",
        date=datetime.date.today().isoformat(),
        dtype=args.dtype,
        copy_gbps=copy_bw / 1e9,
        command="python " + " ".join(sys.argv),
    )
    print(json.dumps(dict(meta=meta, results=results), indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown(meta, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
