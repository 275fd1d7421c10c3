"""What onnxruntime's CPU kernels cost, op by op, on the shapes our step graphs give them: the probes
behind the formulations the exporter picks and behind what it cannot pick (issues 21 and 31).

Each probe builds small ONNX graphs with random weights, times them side by side in this process
(the best of 3 rounds of many runs, after a warm-up) and checks that the formulations compared
compute the same thing.

- `conv`: the Mamba conv (4096 channels, kernel 4) at 1 and 512 new tokens: CausalConvWithState with
  its own SiLU, without (SiLU as Sigmoid * Mul, which onnxruntime fuses into one QuickGelu), and as a
  Concat + grouped Conv + SiLU + Slice.
- `experts`: the routed experts at one token (6 of X experts), int4 block 32, weights read from memory
  (each timed graph makes 8 calls on other experts): the QMoE node (relu2 as interleaved SwiGLU, `up`
  stored twice), one MatMulNBits over the 6 experts' `up` rows with constant weights (what a kernel
  reading `up` once would read for fc1), and the same MatMulNBits with the rows gathered at run time
  (a dynamic B: the only way to pick experts' rows with stock ops). Bytes read and the rate show
  whether a formulation is slow per byte or reads more bytes.
- `scan`: the Mamba-2 one-token update (LinearAttention, gated) at 1 and 2 threads: whether it uses
  the second thread.
- `nodes`: the cost of a node itself: 400 small elementwise / Reshape nodes on (1, 1024).
- `kv`: an attention layer's decode step at 4k-32k tokens of past (Nemotron-H-4B's attention widths): as
  exported (Concat of the past and new K/V into a new present) against GroupQueryAttention writing the new
  K/V into one buffer that is both past and present (IO binding): what an in-place K/V contract would give.

Usage: python benchmarks/probe_onnxruntime_cpu.py [--probes conv,experts,scan,nodes,kv] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_transformers import cpu_name

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers) -> bytes:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _io(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _time(model: bytes, feeds: dict, threads: int, runs: int) -> tuple[float, list]:
    """Best mean milliseconds per run over 3 rounds of `runs`, and the outputs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options)
    for _ in range(max(3, runs // 10)):
        session.run(None, feeds)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feeds)
        best = min(best, (time.perf_counter() - start) / runs)
    return best * 1e3, session.run(None, feeds)


def probe_conv(threads: int, channels: int = 4096, kernel: int = 4) -> list[tuple]:
    weight = RNG.standard_normal((channels, 1, kernel), dtype=np.float32)
    inits = {"w": weight, "b": RNG.standard_normal(channels, dtype=np.float32)}
    inputs = [_io("x", TensorProto.FLOAT, [1, channels, "T"]), _io("state", TensorProto.FLOAT, [1, channels, kernel - 1])]
    outputs = [_io("y", TensorProto.FLOAT, None), _io("new_state", TensorProto.FLOAT, None)]
    fused = lambda activation, out: helper.make_node(  # noqa: E731
        "CausalConvWithState", ["x", "w", "b", "state"], [out, "new_state"], domain="com.microsoft", activation=activation
    )
    silu = [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    forms = {
        "CausalConvWithState, activation silu": _model([fused("silu", "y")], inputs, outputs, inits),
        "CausalConvWithState, activation none; SiLU as ops": _model([fused("none", "c"), *silu], inputs, outputs, inits),
        "Concat + Conv (group = channels) + SiLU + Slice": _model(
            [
                helper.make_node("Concat", ["state", "x"], ["window"], axis=2),
                helper.make_node("Conv", ["window", "w", "b"], ["c"], group=channels, kernel_shape=[kernel]),
                *silu,
                helper.make_node("Slice", ["window", "first", "end", "axis"], ["new_state"]),
            ],
            inputs,
            outputs,
            inits | {"first": np.array([1 - kernel]), "end": np.array([2**62]), "axis": np.array([2])},
        ),
    }
    rows = []
    for tokens in (1, 512):
        feeds = {
            "x": RNG.standard_normal((1, channels, tokens), dtype=np.float32),
            "state": RNG.standard_normal((1, channels, kernel - 1), dtype=np.float32),
        }
        reference = None
        for name, model in forms.items():
            ms, out = _time(model, feeds, threads, 300 if tokens == 1 else 20)
            reference = out if reference is None else reference
            error = max(float(np.abs(a - b).max()) for a, b in zip(out, reference))
            rows.append(("conv", f"{channels} channels, T={tokens}", name, ms, error))
    return rows


def probe_experts(threads: int, shapes=((64, 512, 1024), (128, 1856, 2688)), k: int = 6, block: int = 32, calls: int = 8) -> list[tuple]:
    """Each graph makes `calls` independent calls on other experts' weights (other routings, other
    matrices), so that the weights come from memory as in a decode step, not from the cache; times are
    per call, with the bytes one call reads and the rate."""
    rows = []
    for experts, width, hidden in shapes:
        up = RNG.integers(0, 256, (experts, width, hidden // block, block // 2), dtype=np.uint8)
        up_scales = (RNG.random((experts, width, hidden // block), dtype=np.float32) * 0.01).astype(np.float32)
        down = RNG.integers(0, 256, (experts, hidden, width // 2), dtype=np.uint8)
        down_scales = (RNG.random((experts, hidden, width // block), dtype=np.float32) * 0.01).astype(np.float32)
        chosen = [RNG.choice(experts, k, replace=False).astype(np.int64) for _ in range(calls)]
        x = RNG.standard_normal((1, hidden), dtype=np.float32)
        x_in = _io("x", TensorProto.FLOAT, [1, hidden])
        outs = [_io(f"y{i}", TensorProto.FLOAT, None) for i in range(calls)]
        matmul = dict(K=hidden, N=k * width, bits=4, block_size=block, accuracy_level=4)
        qmoe_attrs = dict(
            k=k, activation_type="swiglu", swiglu_fusion=1, activation_alpha=1e4, activation_beta=0.0,
            normalize_routing_weights=0, expert_weight_bits=4, block_size=block, accuracy_level=4,
        )  # fmt: skip
        probs = {}
        for i, c in enumerate(chosen):
            probs[f"p{i}"] = np.full((1, experts), -np.inf, np.float32)
            probs[f"p{i}"][0, c] = 0.0
        qmoe = _model(
            [
                helper.make_node(
                    "QMoE", ["x", f"p{i}", "fc1", "fc1_s", "", "fc2", "fc2_s"], [f"y{i}"], domain="com.microsoft", **qmoe_attrs
                )
                for i in range(calls)
            ],
            [x_in, *(_io(f"p{i}", TensorProto.FLOAT, [1, experts]) for i in range(calls))],
            outs,
            {
                "fc1": np.repeat(up.reshape(experts, width, hidden // 2), 2, axis=1),
                "fc1_s": np.repeat(up_scales, 2, axis=1),
                "fc2": down,
                "fc2_s": down_scales,
            },
        )
        constant = _model(
            [helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft", **matmul) for i in range(calls)],
            [x_in],
            outs,
            {f"w{i}": up[c].reshape(k * width, hidden // block, block // 2) for i, c in enumerate(chosen)}
            | {f"s{i}": up_scales[c].reshape(-1) for i, c in enumerate(chosen)},
        )
        gathered = _model(
            [
                helper.make_node("Gather", ["up", "chosen"], ["w3"], axis=0),
                helper.make_node("Reshape", ["w3", "w_shape"], ["w"]),
                helper.make_node("Gather", ["up_scales", "chosen"], ["s3"], axis=0),
                helper.make_node("Reshape", ["s3", "s_shape"], ["s"]),
                helper.make_node("MatMulNBits", ["x", "w", "s"], ["y0"], domain="com.microsoft", **matmul),
            ],
            [x_in, _io("chosen", TensorProto.INT64, [k])],
            outs[:1],
            {"up": up, "up_scales": up_scales, "w_shape": np.array([k * width, hidden // block, block // 2]), "s_shape": np.array([-1])},
        )
        label = f"X={experts}, {k} chosen, width {width}, hidden {hidden}, int4"
        matrix = width * hidden // 2 + width * (hidden // block) * 4  # one expert matrix: int4 data and float32 scales

        def row(name, model, feeds, per_run, read, reference=None):
            ms, out = _time(model, feeds, threads, 100 if per_run > 1 else 5)
            ms /= per_run
            error = None if reference is None else float(np.abs(out[0] - reference[0]).max())
            rows.append(("experts", label, f"{name}: {read / 2**20:.1f} MiB read, {read / ms / 1e6:.1f} GB/s", ms, error))
            return out

        row("QMoE node: up (stored twice) and down", qmoe, {"x": x} | probs, calls, 3 * k * matrix)
        once = row("MatMulNBits on the chosen experts' up rows, once (constant)", constant, {"x": x}, calls, k * matrix)
        # the diff: float32 dequantization of the gathered rows against the constant rows' int8 activations
        row("the same MatMulNBits with the rows gathered at run time", gathered, {"x": x, "chosen": chosen[0]}, 1, k * matrix, once)
    return rows


def scan_graph(heads: int = 32, groups: int = 8, head_dim: int = 64, state: int = 128, layers: int = 24) -> tuple[bytes, dict]:
    """`layers` LinearAttention (gated) nodes at one token, each on its own state (24 MiB in all: from
    memory, as in a step), the benchmark model's head shapes: the model and its feeds."""
    inputs, outputs, nodes, feeds = [], [], [], {}
    for i in range(layers):
        names = [f"{n}{i}" for n in ("q", "k", "v", "state", "decay")]
        inputs += [_io(n, TensorProto.FLOAT, None) for n in names]
        outputs += [_io(f"y{i}", TensorProto.FLOAT, None), _io(f"new_state{i}", TensorProto.FLOAT, None)]
        attrs = dict(update_rule="gated", q_num_heads=groups, kv_num_heads=heads, scale=1.0)
        nodes.append(helper.make_node("LinearAttention", names, [f"y{i}", f"new_state{i}"], domain="com.microsoft", **attrs))
        shapes = [(1, 1, groups * state), (1, 1, groups * state), (1, 1, heads * head_dim), (1, heads, state, head_dim)]
        feeds |= {name: RNG.standard_normal(shape, dtype=np.float32) for name, shape in zip(names, shapes)}
        feeds[names[4]] = -RNG.random((1, 1, heads), dtype=np.float32)
    return _model(nodes, inputs, outputs, {}), feeds


def weights_graph(
    bits: int | None, tokens: int = 1, hidden: int = 1024, width: int = 6144, block: int = 32, total_mib: int = 96
) -> tuple[bytes, dict]:
    """Products of x (tokens, hidden) by weights (width, hidden) of their own, as a step's projections
    are: MatMulNBits (int `bits`, block-wise, accuracy level 4, as the exporter writes them) or float32
    MatMul (`bits` None); as many as make `total_mib` of weights (more than the caches: from memory).
    The model and its feeds."""
    matrix_bytes = width * hidden * (bits or 32) // 8
    calls = max(1, total_mib * 2**20 // matrix_bytes)
    nodes, outputs, weights = [], [], {}
    for i in range(calls):
        outputs.append(_io(f"y{i}", TensorProto.FLOAT, None))
        if bits is None:
            weights[f"w{i}"] = RNG.standard_normal((hidden, width), dtype=np.float32)
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
            continue
        weights[f"w{i}"] = RNG.integers(0, 256, (width, hidden // block, block * bits // 8), dtype=np.uint8)
        weights[f"s{i}"] = (RNG.random(width * hidden // block, dtype=np.float32) * 0.01).astype(np.float32)
        attrs = dict(K=hidden, N=width, bits=bits, block_size=block, accuracy_level=4)
        nodes.append(helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft", **attrs))
    model = _model(nodes, [_io("x", TensorProto.FLOAT, [tokens, hidden])], outputs, weights)
    return model, {"x": RNG.standard_normal((tokens, hidden), dtype=np.float32)}


def probe_scan(threads: int, heads: int = 32, groups: int = 8, head_dim: int = 64, state: int = 128, layers: int = 24) -> list[tuple]:
    """The Mamba-2 update at one token as LinearAttention (gated) at 1 and `threads` threads (`scan_graph`)."""
    model, feeds = scan_graph(heads, groups, head_dim, state, layers)
    label = f"{heads} heads x ({state}, {head_dim}) state, T=1"
    rows = []
    for n in sorted({1, threads}):
        ms, _ = _time(model, feeds, n, 30)
        rows.append(("scan", label, f"LinearAttention, {n} thread{'s' * (n > 1)}, per layer", ms / layers, None))
    return rows


def probe_kv(
    threads: int, heads: int = 32, kv_heads: int = 8, head_dim: int = 128, pasts=(4096, 16384, 32768), layers: int = 2
) -> list[tuple]:
    """One attention layer's decode step at a long past (Nemotron-H-4B's attention widths), `layers` layers
    on their own K/V (from memory): as the exporter writes it (Concat of the past and the new K/V into a
    new present, then the products) against GroupQueryAttention writing the new K/V into a preallocated
    buffer that is past and present at once (IO binding: what an in-place K/V state contract would run)."""
    rows, groups = [], heads // kv_heads
    for past in pasts:
        keys = [RNG.standard_normal((1, kv_heads, past, head_dim), dtype=np.float32) for _ in range(2 * layers)]
        q = RNG.standard_normal((1, 1, heads * head_dim), dtype=np.float32)
        k, v = (RNG.standard_normal((1, 1, kv_heads * head_dim), dtype=np.float32) for _ in range(2))
        concat_ms, reference = _time(*_concat_attention(keys, q, k, v, kv_heads, groups, head_dim, layers), threads, 10)
        gqa_ms, out = _time_in_place(keys, q, k, v, heads, kv_heads, head_dim, layers, threads)
        label = f"{heads} heads, {kv_heads} K/V heads x {head_dim}, past {past}"
        rows.append(("kv", label, "Concat + MatMul + Softmax + MatMul (as exported), per layer", concat_ms / layers, None))
        error = float(np.abs(out - reference[0].reshape(out.shape)).max())
        rows.append(("kv", label, "GroupQueryAttention, K/V buffer shared by past and present, per layer", gqa_ms / layers, error))
    return rows


def _concat_attention(keys, q, k, v, kv_heads, groups, head_dim, layers):
    """The exporter's attention step (exporter/modeling/attention.py) on `layers` layers' past K/V."""
    nodes, inputs, feeds, outputs = [], [_io(n, TensorProto.FLOAT, None) for n in ("q", "k", "v")], {"q": q, "k": k, "v": v}, []
    nodes += [
        helper.make_node("Reshape", ["q", "q_shape"], ["q5"]),
        helper.make_node("Reshape", ["k", "kv_shape"], ["k4"]),
        helper.make_node("Reshape", ["v", "kv_shape"], ["v4"]),
    ]
    for i in range(layers):
        past_k, past_v = f"past_k{i}", f"past_v{i}"
        inputs += [_io(past_k, TensorProto.FLOAT, None), _io(past_v, TensorProto.FLOAT, None)]
        feeds |= {past_k: keys[2 * i], past_v: keys[2 * i + 1]}
        outputs += [
            _io(f"out{i}", TensorProto.FLOAT, None),
            _io(f"key{i}", TensorProto.FLOAT, None),
            _io(f"value{i}", TensorProto.FLOAT, None),
        ]
        nodes += [
            helper.make_node("Concat", [past_k, "k4"], [f"key{i}"], axis=2),
            helper.make_node("Concat", [past_v, "v4"], [f"value{i}"], axis=2),
            helper.make_node("Unsqueeze", [f"key{i}", "two"], [f"key5_{i}"]),
            helper.make_node("Unsqueeze", [f"value{i}", "two"], [f"value5_{i}"]),
            helper.make_node("Transpose", [f"key5_{i}"], [f"keyT{i}"], perm=[0, 1, 2, 4, 3]),
            helper.make_node("MatMul", ["q5", f"keyT{i}"], [f"scores{i}"]),
            helper.make_node("Mul", [f"scores{i}", "scale"], [f"scaled{i}"]),
            helper.make_node("Softmax", [f"scaled{i}"], [f"probs{i}"], axis=-1),
            helper.make_node("MatMul", [f"probs{i}", f"value5_{i}"], [f"out{i}"]),
        ]
    constants = {
        "q_shape": np.array([1, kv_heads, groups, 1, head_dim]),
        "kv_shape": np.array([1, kv_heads, 1, head_dim]),
        "two": np.array([2]),
        "scale": np.array(head_dim**-0.5, np.float32),
    }
    return _model(nodes, inputs, outputs, constants), feeds


def _time_in_place(keys, q, k, v, heads, kv_heads, head_dim, layers, threads):
    """GroupQueryAttention on `layers` layers, each past K/V copied once into a buffer one row longer that
    IO binding gives as both the past input and the present output; the best mean of 3 rounds (ms) and
    the first layer's output."""
    past = keys[0].shape[2]
    nodes, inputs, outputs = [], [_io(n, TensorProto.FLOAT, None) for n in ("q", "k", "v")], []
    inputs += [_io("seqlens_k", TensorProto.INT32, [1]), _io("total_len", TensorProto.INT32, [])]
    for i in range(layers):
        inputs += [_io(f"past_k{i}", TensorProto.FLOAT, None), _io(f"past_v{i}", TensorProto.FLOAT, None)]
        outputs += [
            _io(f"out{i}", TensorProto.FLOAT, None),
            _io(f"present_k{i}", TensorProto.FLOAT, None),
            _io(f"present_v{i}", TensorProto.FLOAT, None),
        ]
        attrs = dict(num_heads=heads, kv_num_heads=kv_heads, scale=head_dim**-0.5)
        ins = ["q", "k", "v", f"past_k{i}", f"past_v{i}", "seqlens_k", "total_len"]
        nodes.append(
            helper.make_node("GroupQueryAttention", ins, [f"out{i}", f"present_k{i}", f"present_v{i}"], domain="com.microsoft", **attrs)
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(_model(nodes, inputs, outputs, {}), options)
    binding = session.io_binding()
    for name, value in {"q": q, "k": k, "v": v, "seqlens_k": np.array([past], np.int32), "total_len": np.array(past + 1, np.int32)}.items():
        binding.bind_cpu_input(name, value)
    buffers = []
    for i in range(layers):
        binding.bind_output(f"out{i}", "cpu")  # first bound: copy_outputs_to_cpu()[0] is layer 0's output
        for j, kind in enumerate(("k", "v")):
            buffer = np.zeros((1, kv_heads, past + 1, head_dim), np.float32)
            buffer[:, :, :past] = keys[2 * i + j]
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            buffers.append((buffer, value))
            binding.bind_ortvalue_input(f"past_{kind}{i}", value)
            binding.bind_ortvalue_output(f"present_{kind}{i}", value)
    for _ in range(3):
        session.run_with_iobinding(binding)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(10):
            session.run_with_iobinding(binding)
        best = min(best, (time.perf_counter() - start) / 10)
    return best * 1e3, binding.copy_outputs_to_cpu()[0]


def nodes_graph(count: int = 400) -> tuple[bytes, dict]:
    """A chain of `count` small elementwise / Reshape nodes on (1, 1024): the model and its feeds."""
    nodes, previous = [], "x"
    for i in range(count):
        op = ("Mul", "Add", "Reshape")[i % 3]
        nodes.append(helper.make_node(op, [previous, "shape" if op == "Reshape" else "c"], [f"t{i}"]))
        previous = f"t{i}"
    model = _model(
        nodes,
        [_io("x", TensorProto.FLOAT, [1, 1024])],
        [_io(previous, TensorProto.FLOAT, [1, 1024])],
        {"shape": np.array([1, 1024]), "c": np.ones(1024, np.float32)},
    )
    return model, {"x": np.ones((1, 1024), np.float32)}


def probe_nodes(threads: int, count: int = 400) -> list[tuple]:
    model, feeds = nodes_graph(count)
    ms, _ = _time(model, feeds, threads, 300)
    return [("nodes", f"{count} nodes on (1, 1024)", "per node", ms * 1e3 / count, None)]


PROBES = {"conv": probe_conv, "experts": probe_experts, "scan": probe_scan, "nodes": probe_nodes, "kv": probe_kv}


def report(rows: list[tuple], threads: int) -> str:
    lines = [
        f"# onnxruntime CPU kernels on our shapes ({datetime.date.today()})",
        "",
        f"`python benchmarks/probe_onnxruntime_cpu.py --threads {threads}`: {cpu_name()}, {threads} threads, onnxruntime "
        f"{ort.__version__}; one run, best of 3 rounds. Times in ms (the `nodes` row: microseconds per node); "
        "max |diff|: against the first formulation of the same shape.",
        "",
        "| probe | shape | formulation | time | max abs diff |",
        "| --- | --- | --- | --- | --- |",
    ]
    for probe, shape, name, ms, error in rows:
        lines.append(f"| {probe} | {shape} | {name} | {ms:.4g} | {'' if error is None else f'{error:.2g}'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", default=",".join(PROBES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [row for name in args.probes.split(",") for row in PROBES[name](args.threads)]
    text = report(rows, args.threads)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
