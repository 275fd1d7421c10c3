"""The MoE formulations for onnxruntime's CPU provider, side by side in one run, at Nano-30B expert sizes.

  moe node    com.microsoft.MoE as the onnxruntime target exports it (routing outside, relu2 as
              interleaved SwiGLU over `up` rows stored twice; exporter/plugin_nodes.py)
  gather      Gather of the k chosen experts' matrices + batched MatMul (the float16 decode formulation)
  matmul      a plain MatMul over the bytes of k experts' up and down matrices: the bandwidth floor
              at one token (no routing, no gather), and the dense-FLOPs reference for a prompt

Weights are graph inputs (a 7 GB model would not fit a protobuf); routing is random per run.
Usage: python benchmarks/bench_moe_cpu.py [--experts 128] [--out benchmarks/results/moe_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from nemotron_deploy.exporter.plugin_nodes import ONNXRUNTIME_MOE_RELU2

F32 = TensorProto.FLOAT


def moe_node_model(din: int, inter: int, experts: int, k: int):
    nodes = [helper.make_node("MoE", ["h", "probs", "fc1", "", "fc2"], ["y"], domain="com.microsoft", k=k, **ONNXRUNTIME_MOE_RELU2)]
    inputs = [("h", ["N", din]), ("probs", ["N", experts]), ("fc1", [experts, 2 * inter, din]), ("fc2", [experts, din, inter])]
    return _model(nodes, inputs, din)


def gather_model(din: int, inter: int, experts: int, k: int):
    """y[n] = sum_j down[e] relu(up[e] h[n])^2 with e = idx[n, j] (weights 1: the cost is the same)."""
    nodes = [
        helper.make_node("Gather", ["up", "idx"], ["up_sel"], axis=0),  # (N, k, I, Din)
        helper.make_node("Unsqueeze", ["h", "axes12"], ["h4"]),  # (N, 1, Din, 1)
        helper.make_node("Unsqueeze", ["h4", "axes3"], ["h_col"]),
        helper.make_node("MatMul", ["up_sel", "h_col"], ["u"]),  # (N, k, I, 1)
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["a"]),
        helper.make_node("Gather", ["down", "idx"], ["down_sel"], axis=0),  # (N, k, Din, I)
        helper.make_node("MatMul", ["down_sel", "a"], ["yk"]),  # (N, k, Din, 1)
        helper.make_node("ReduceSum", ["yk", "axes13"], ["y"], keepdims=0),
    ]
    inits = [
        helper.make_tensor("axes12", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes3", TensorProto.INT64, [1], [3]),
        helper.make_tensor("axes13", TensorProto.INT64, [2], [1, 3]),
    ]
    inputs = [("h", ["N", din]), ("idx", ["N", k]), ("up", [experts, inter, din]), ("down", [experts, din, inter])]
    return _model(nodes, inputs, din, inits, {"idx": TensorProto.INT64})


def matmul_model(din: int, inter: int, k: int):
    nodes = [
        helper.make_node("MatMul", ["h", "w1"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["y"]),
    ]
    return _model(nodes, [("h", ["N", din]), ("w1", [din, k * inter]), ("w2", [k * inter, din])], din)


def _model(nodes, inputs, din, inits=(), types=None):
    types = types or {}
    graph = helper.make_graph(
        nodes,
        "moe",
        [helper.make_tensor_value_info(n, types.get(n, F32), s) for n, s in inputs],
        [helper.make_tensor_value_info("y", F32, None)],
        initializer=list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def timed(session, feeds_fn, repeats: int) -> float:
    session.run(None, feeds_fn())  # warm-up
    times = []
    for _ in range(repeats):
        feeds = feeds_fn()
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=2688)
    ap.add_argument("--inter", type=int, default=1856)
    ap.add_argument("--tokens", default="1,256")
    ap.add_argument("--out", default="benchmarks/results/moe_cpu.md")
    args = ap.parse_args()
    x, k, din, inter = args.experts, args.top_k, args.hidden, args.inter
    rng = np.random.default_rng(0)
    up = rng.standard_normal((x, inter, din), dtype=np.float32) * 0.02
    down = rng.standard_normal((x, din, inter), dtype=np.float32) * 0.02
    fc1 = np.repeat(up, 2, axis=1)
    w1 = np.ascontiguousarray(up[:k].reshape(k * inter, din).T)
    w2 = np.ascontiguousarray(down[:k].transpose(0, 2, 1).reshape(k * inter, din))
    rows = []
    for threads in (1, 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = threads, 3
        sessions = {
            name: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            for name, m in (
                ("moe node", moe_node_model(din, inter, x, k)),
                ("gather", gather_model(din, inter, x, k)),
                ("matmul", matmul_model(din, inter, k)),
            )
        }
        for n in map(int, args.tokens.split(",")):

            def routing():
                idx = np.stack([rng.choice(x, k, replace=False) for _ in range(n)])
                return idx, rng.random((n, k), dtype=np.float32) + 0.1

            def moe_feeds():
                idx, w = routing()
                probs = np.full((n, x), -np.inf, np.float32)
                np.put_along_axis(probs, idx, np.log(w), axis=1)
                return {"h": rng.standard_normal((n, din), dtype=np.float32), "probs": probs, "fc1": fc1, "fc2": down}

            repeats = 7 if n == 1 else 3
            row = {"threads": threads, "tokens": n, "moe node": timed(sessions["moe node"], moe_feeds, repeats)}
            if n * k * 2 * inter * din * 4 < 4 * 2**30:  # the gather copies N*k expert matrices
                row["gather"] = timed(
                    sessions["gather"],
                    lambda: {
                        "h": rng.standard_normal((n, din), dtype=np.float32),
                        "idx": routing()[0].astype(np.int64),
                        "up": up,
                        "down": down,
                    },
                    repeats,
                )
            row["matmul"] = timed(
                sessions["matmul"], lambda: {"h": rng.standard_normal((n, din), dtype=np.float32), "w1": w1, "w2": w2}, repeats
            )
            rows.append(row)
            print(row)
    lines = [
        f"# MoE formulations on onnxruntime {ort.__version__} CPU ({datetime.date.today()})",
        "",
        f"`python benchmarks/bench_moe_cpu.py`: {x} experts, top-{k}, hidden {din}, expert width {inter}, float32, median ms.",
        "Machine: the 2-core development VM (no GPU). One process, one run, formulations side by side.",
        "",
        "| threads | tokens | moe node | gather k experts + MatMul | plain MatMul over k experts' bytes |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {r['threads']} | {r['tokens']} | {r['moe node']:.1f} | {r.get('gather', float('nan')):.1f} | {r['matmul']:.1f} |"
            for r in rows
        ],
        "",
        "gather at many tokens is not run (it would copy tokens x k expert matrices).",
    ]
    Path(args.out).write_text("\n".join(lines).replace("| nan |", "| not run |") + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
