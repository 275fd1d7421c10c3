"""Weight-only block-wise quantization for the onnxruntime target: `export --quantize int8|int4`.

Every large matrix product reads its weight as `bits`-bit integers with one float32 scale per block of
`block_size` consecutive input features (round to nearest, symmetric: the block's value of largest
magnitude maps to -2^(bits-1), the zero point is the format's default 2^(bits-1), so no zero-point
tensors are stored). onnxruntime dequantizes on the fly:

    MatMul(x, W^T)             -> com.microsoft.MatMulNBits(x, W_q, scales)      (Linear layers, lm_head)
    com.microsoft.MoE(...)     -> com.microsoft.QMoE(...)                        (the routed experts)
    Gather(E, ids)             -> com.microsoft.GatherBlockQuantized(E_q, ids, scales)   (the embedding)

with `accuracy_level=4`: activations are quantized to int8 per block inside the kernel, which is what
makes the int8 and int4 kernels fast on a CPU (int8 at level 0 was 29x slower than float32 here).
The embedding is stored the same way and dequantized row by row as tokens are looked up (it is the largest
matrix of a large-vocabulary model: 1.4 GB of Nemotron-3-Nano-30B-A3B in float32). Norms, the router,
the SSM parameters, the conv and all states stay in full precision.
Weights keep their checkpoint layout (out_features, in_features): rows are independent, so they are
quantized block by block while streaming, like every other weight.
"""

from __future__ import annotations

from dataclasses import dataclass

BITS = {"int8": 8, "int4": 4}
ACCURACY_LEVEL = 4  # int8 activations inside the kernel; level 0 (exact) is far slower on CPUs
MiB = 2**20
# onnxruntime's packed copy of one weight over its stored bytes, on the high side (measured at real
# scale: Nemotron-H-4B's int8 lm_head 1.41x; an int4 QMoE fc1 1.17x)
PACKED_OVER_STORED = 1.5


@dataclass(frozen=True)
class QuantScheme:
    """bits per weight and the block length along the input features."""

    bits: int
    block_size: int

    @classmethod
    def parse(cls, name: str, block_size: int | None):
        """`--quantize NAME [--block-size N]` -> scheme; raises ValueError with a one-line reason."""
        if name not in BITS:
            raise ValueError(f"--quantize {name!r}: expected one of {', '.join(BITS)}")
        block = 32 if block_size is None else block_size
        if block < 16 or block & (block - 1):
            raise ValueError(f"--block-size {block}: expected a power of two >= 16 (onnxruntime's MatMulNBits and QMoE)")
        return cls(BITS[name], block)

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def bytes_per_weight(self) -> float:
        """Stored bytes per weight: the packed integers plus one float32 scale per block."""
        return self.bits / 8 + 4 / self.block_size

    def to_json(self) -> dict:
        return {
            "method": "block-wise weight-only RTN, symmetric",
            "bits": self.bits,
            "block_size": self.block_size,
            "scale_dtype": "float32",
            "accuracy_level": ACCURACY_LEVEL,
        }


def quantize_rows(w, bits: int, block_size: int):
    """Symmetric block-wise quantization along the last axis.

    w: (..., K) float tensor, K a multiple of block_size. Returns (packed (..., K/block, block*bits/8)
    uint8, scales (..., K/block) float32) such that w ~ (q - 2^(bits-1)) * scale, with q unsigned and,
    for 4 bits, element 2i in the low nibble of byte i (onnxruntime's MatMulNBits / QMoE layout).
    """
    import torch

    blocks = w.float().unflatten(-1, (-1, block_size))  # (..., nb, block)
    half = 2 ** (bits - 1)
    extreme = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))  # signed value of largest magnitude
    scales = extreme / -half  # the extreme maps to -half exactly; the other sign reaches half - 1
    inverse = torch.where(scales == 0, torch.zeros_like(scales), 1 / scales)
    q = (torch.round(blocks * inverse).clamp(-half, half - 1) + half).to(torch.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q.contiguous(), scales[..., 0].contiguous()


def dequantize_rows(packed, scales, bits: int):
    """The inverse of `quantize_rows` (float32 (..., K)): the reference the tests compare kernels with."""
    import torch

    if bits == 4:
        packed = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)
    return ((packed.float() - 2 ** (bits - 1)) * scales[..., None]).flatten(-2)


class QuantizeError(ValueError):
    """A checkpoint whose layer widths the scheme cannot quantize (message names the layer)."""


def check_widths(model, scheme: QuantScheme) -> None:
    """Every weight `quantize_graph` will quantize has an input width that `scheme.block_size` divides.

    model: the (meta) step model, before tracing. Raises QuantizeError naming the first layer that does not.
    """
    for name, shape in quantized_parameters(model).items():
        if shape[-1] % scheme.block_size:
            raise QuantizeError(
                f"--block-size {scheme.block_size} does not divide the input width of {name} "
                f"(shape {'x'.join(map(str, shape))}: {shape[-1]} input features); pick a block size that divides it"
            )


def quantized_parameters(model) -> dict[str, tuple[int, ...]]:
    """The parameters that `--quantize` stores as integers -> their shapes: every Linear weight but the
    router's, the routed experts' stacked up / down tensors, and the embedding."""
    from torch import nn

    out = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.Linear):
            out[f"{prefix}weight"] = tuple(module.weight.shape)
        for attr in ("experts_up", "experts_down"):
            if isinstance(getattr(module, attr, None), nn.Parameter):
                out[f"{prefix}{attr}"] = tuple(getattr(module, attr).shape)
    out["embeddings.weight"] = tuple(model.embeddings.weight.shape)
    return out


def decode_weight_bytes(model, scheme: QuantScheme | None) -> int:
    """Weight bytes one decode step must read for one sequence at the artifact's precision: every
    parameter once, the routed experts only k of X, the embedding not at all (a lookup reads one row).
    The model's own bytes: a formulation that reads more (the relu2 layout stores `up` twice) does not
    count, so the floor it implies is the one to measure against."""
    quantized = set(quantized_parameters(model)) if scheme is not None else set()
    cfg = model.cfg
    total = 0.0
    for name, param in model.named_parameters():
        if name.startswith("embeddings."):
            continue
        per_weight = scheme.bytes_per_weight() if name in quantized else param.element_size()
        share = cfg.num_experts_per_tok / cfg.n_routed_experts if name.rsplit(".", 1)[-1] in ("experts_up", "experts_down") else 1
        total += param.numel() * share * per_weight
    return int(total)


def stored_bytes(model, scheme: QuantScheme) -> int:
    """weights.data's size, near enough: every parameter of `model` (the meta step model) once, at
    `scheme` where `--quantize` stores it as integers (the embedding at `embedding_scheme`), else float32."""
    quantized = quantized_parameters(model)
    total = 0.0
    for name, param in model.named_parameters():
        if name not in quantized:
            total += param.numel() * 4
        else:
            total += param.numel() * (embedding_scheme(scheme) if name == "embeddings.weight" else scheme).bytes_per_weight()
    return int(total)


def part_limit(weights_bytes: int) -> int:
    """The most stored bytes one packed weight tensor may hold, for an artifact of `weights_bytes`.

    An open that maps the pre-packed cache still packs each weight once more, to check it against the
    cache's blob, and frees that copy before the next (runtime/onnx_prepacked.py): the largest packed
    tensor is the open's peak of anonymous memory, whose bound is 0.1x weights.data + 128 MiB. With 64
    MiB of that left to the process, a larger weight is split (`quantize_graph`) into parts whose packed
    copies fit the rest: Nemotron-H-4B's lm_head in two (int8 and int4), each MoE layer's experts of the
    Nemotron-3-Nano-30B-A3B widths' 6-layer case in four (int4); of the full Nemotron-3-Nano-30B-A3B
    (18.6 GiB of int4) nothing."""
    return int((0.1 * weights_bytes + 64 * MiB) / PACKED_OVER_STORED)


def quantize_graph(model, specs: dict, scheme: QuantScheme, quantizable: set[str], max_part_bytes: int | None = None) -> None:
    """Rewrite an onnx_ir graph (after `fold_weight_layouts`): each MatMul / Gemm whose weight is a Linear
    weight in `quantizable` becomes MatMulNBits, each com.microsoft.MoE node a QMoE, the embedding's Gather a
    GatherBlockQuantized; `specs` updated in
    place (the float weights they replace are dropped when nothing else uses them). Raises RuntimeError
    if a weight in `quantizable` is left in float (a traced form this pass does not know).

    max_part_bytes: a product whose quantized weight would be larger becomes several, each on a part of
    the output rows (MatMulNBits: their outputs concatenated) or of the experts' hidden units (QMoE:
    their outputs added), none larger (`part_limit`); None: no split."""
    graph = model.graph
    for node in list(graph):
        if node.domain != "" and node.op_type != "MoE":
            continue
        if node.op_type == "Gather" and _is_embedding(node, specs, quantizable):
            table, rows = node.inputs[0], embedding_scheme(scheme)
            q, s = _quantized_inputs(graph, specs, specs[table.name], tuple(table.shape.numpy()), rows, flat=True)
            attrs = dict(gather_axis=0, quantize_axis=1, block_size=rows.block_size, bits=rows.bits)
            _replace(graph, node, [("GatherBlockQuantized", [q, node.inputs[1], s], attrs)], "", specs)
        elif node.op_type in ("MatMul", "Gemm"):
            weight, bias = _linear_weight(node, specs, quantizable)
            if weight is None:
                continue
            n, k = _logical_shape(node, weight)
            # a Gemm's bias (an MoE's small latent projections) is never split
            limit = max_part_bytes if bias is None else None
            spec, parts = specs[weight.name], _parts(n, n * k * scheme.bytes_per_weight(), 1, limit)
            products = []
            for start, stop in parts:
                part = spec if len(parts) == 1 else _base(spec).with_layout("slice", (0, start, stop))
                q, s = _quantized_inputs(graph, specs, part, (stop - start, k), scheme, flat=False)
                attrs = dict(K=k, N=stop - start, bits=scheme.bits, block_size=scheme.block_size, accuracy_level=ACCURACY_LEVEL)
                products.append(("MatMulNBits", [node.inputs[0], q, s] + ([None, None, bias] if bias is not None else []), attrs))
            _replace(graph, node, products, "Concat", specs)
        elif node.op_type == "MoE" and node.domain == "com.microsoft":
            hidden, probs, fc1, _, fc2 = node.inputs
            experts, hidden_size, units = tuple(fc2.shape.numpy())
            fc1_spec, fc2_spec = specs[fc1.name], specs[fc2.name]
            # the largest tensor is fc1 as the kernel reads it: `up` with every row repeated
            largest = experts * tuple(fc1.shape.numpy())[1] * hidden_size * scheme.bytes_per_weight()
            parts = _parts(units, largest, scheme.block_size, max_part_bytes)
            attrs = {name: attr.value for name, attr in node.attributes.items()}
            attrs.update(expert_weight_bits=scheme.bits, block_size=scheme.block_size, accuracy_level=ACCURACY_LEVEL)
            products = []
            for start, stop in parts:
                one = len(parts) == 1
                q1, s1 = _stored_once(graph, node, specs, fc1_spec, tuple(fc1.shape.numpy()), scheme, None if one else (start, stop))
                part2 = fc2_spec if one else fc2_spec.with_layout("slice", (2, start, stop))
                q2, s2 = _quantized_inputs(graph, specs, part2, (experts, hidden_size, stop - start), scheme, flat=True)
                products.append(("QMoE", [hidden, probs, q1, s1, None, q2, s2], attrs))
            _replace(graph, node, products, "Sum", specs)
    left = sorted(
        {spec.param for spec in specs.values() if spec.param in quantizable and not any(layout[0] == "quantize" for layout in spec.layouts)}
    )
    if left:
        raise RuntimeError(f"--quantize: {', '.join(left)} stayed in float (traced in a form the quantization pass does not rewrite)")


def _parts(length: int, nbytes: float, align: int, max_part_bytes: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges of `length` rows (units), each a multiple of `align` but the last, in as few
    near-equal parts as keep each part's share of `nbytes` within `max_part_bytes`."""
    count = 1 if max_part_bytes is None else -(-int(nbytes) // max_part_bytes)
    count = max(1, min(count, length // align))
    blocks = length // align
    bounds = [align * (blocks * i // count) for i in range(count)] + [length]
    return list(zip(bounds[:-1], bounds[1:]))


def _base(spec):
    """`spec` without its transposes: rows in the checkpoint's (out, in) layout, as quantized."""
    return type(spec)(spec.param, spec.dtype, tuple(layout for layout in spec.layouts if layout[0] != "transpose"))


def embedding_scheme(scheme: QuantScheme) -> QuantScheme:
    """How the embedding is stored: never below 8 bits. Each token's row enters the residual stream
    unmixed, so its rounding error is not averaged over a product's inputs as a Linear weight's is: at 4
    bits the MoE test checkpoint's greedy tokens agreed with float32 at 67% of positions against 95% with an
    8-bit table (tests/exporter/test_quantize.py), for ~0.5 byte per embedding weight."""
    return QuantScheme(max(scheme.bits, 8), scheme.block_size)


def _is_embedding(node, specs: dict, quantizable: set[str]) -> bool:
    """A row lookup (Gather along axis 0) in a quantizable table stored as it is."""
    table = node.inputs[0]
    spec = specs.get(table.name) if table is not None and table.is_initializer() else None
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    return spec is not None and spec.param in quantizable and not spec.layouts and axis == 0


def _linear_weight(node, specs: dict, quantizable: set[str]):
    """(weight value, bias value or None) if `node` is a Linear layer's product with a quantizable
    weight: MatMul(x, W^T) with W^T a folded transpose, or Gemm(x, W, b, transB=1); else (None, None)."""
    weight = node.inputs[1]
    spec = specs.get(weight.name) if weight is not None and weight.is_initializer() else None
    if spec is None or spec.param not in quantizable:
        return None, None
    if node.op_type == "MatMul":
        return (weight, None) if spec.layouts == (("transpose", (1, 0)),) else (None, None)
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    plain = attrs.get("transB") == 1 and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    if not plain or spec.layouts:
        return None, None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return weight, bias


def _logical_shape(node, weight) -> tuple[int, int]:
    """(N out features, K in features) of a Linear weight as `node` reads it."""
    a, b = weight.shape.numpy()
    return (b, a) if node.op_type == "MatMul" else (a, b)


def _drop_unused_weights(graph, specs: dict, values) -> None:
    for value in values:
        if value.name in specs and not value.uses():
            graph.initializers.pop(value.name)
            del specs[value.name]


def _quantized_inputs(graph, specs: dict, spec, shape: tuple[int, ...], scheme: QuantScheme, flat: bool):
    """Initializers (packed integers, scales) for the float weight `spec` of logical `shape` (..., N, K)
    in (out, in) layout; `flat` packs each row as one axis (QMoE) rather than (blocks, bytes) (MatMulNBits)."""
    import onnx_ir as ir

    from nemotron_deploy.exporter.weight_spec import WeightSpec, placeholder_value

    *lead, k = shape
    blocks = k // scheme.block_size
    base = tuple(layout for layout in spec.layouts if layout[0] != "transpose")  # rows stay (out, in)
    values = []
    for part, dtype, dims in (
        ("weights", ir.DataType.UINT8, (*lead, k * scheme.bits // 8) if flat else (*lead, blocks, scheme.block_size * scheme.bits // 8)),
        ("scales", ir.DataType.FLOAT, (*lead, blocks)),
    ):
        qspec = WeightSpec(
            spec.param, "uint8" if part == "weights" else "float32", (*base, ("quantize", (scheme.bits, scheme.block_size, part)))
        )
        name = f"{spec.param}.{scheme.name}_{part}" + ("" if not base else "." + "_".join(map(_layout_name, base)))
        if name not in graph.initializers:
            graph.register_initializer(placeholder_value(name, dtype, ir.Shape(dims)))
            specs[name] = qspec
        values.append(graph.initializers[name])
    return values


def _layout_name(layout) -> str:
    kind, arg = layout
    return f"slice{arg[0]}_{arg[1]}_{arg[2]}" if kind == "slice" else kind


def _stored_once(graph, node, specs: dict, spec, shape: tuple[int, ...], scheme: QuantScheme, units: tuple[int, int] | None = None):
    """QMoE's fc1 inputs (packed integers, scales) with each stored row once; `units`: only the rows of
    hidden units start..stop-1 (a part of a split QMoE).

    The onnxruntime target's fc1 is `up` with every row repeated (the interleaved-SwiGLU form of relu2
    that onnxruntime's CPU MoE kernels run: exporter/plugin_nodes.py), which the float graph stores that
    way. Quantized, `up` is stored once and repeated in the graph (Unsqueeze, Concat, Reshape on
    initializers): onnxruntime folds those constants when it opens the graph, before it packs them, so
    the kernel reads what it read before, and the artifact holds each row once."""
    import onnx_ir as ir

    repeats = [arg for kind, arg in spec.layouts if kind == "repeat_rows"]
    if not repeats or spec.layouts[-1][0] != "repeat_rows":
        if units is not None:
            raise RuntimeError(f"--quantize: {spec.param} is not `up` with repeated rows; its QMoE cannot be split")
        return _quantized_inputs(graph, specs, spec, shape, scheme, flat=True)
    r = repeats[-1]
    experts, rows, k = shape
    once = type(spec)(spec.param, spec.dtype, spec.layouts[:-1])
    if units is not None:
        once, rows = once.with_layout("slice", (1, *units)), (units[1] - units[0]) * r
    values = []
    for value in _quantized_inputs(graph, specs, once, (experts, rows // r, k), scheme, flat=True):
        width = value.shape.numpy()[-1]
        axes = ir.tensor([2], dtype=ir.DataType.INT64, name=f"{value.name}.unsqueeze_axes")
        target = ir.tensor([experts, rows, width], dtype=ir.DataType.INT64, name=f"{value.name}.repeated_shape")
        unsqueeze = ir.node("Unsqueeze", [value, _constant(graph, axes)], name=f"{node.name}/{value.name}/unsqueeze")
        concat = ir.node("Concat", [unsqueeze.outputs[0]] * r, attributes={"axis": 2}, name=f"{node.name}/{value.name}/repeat_rows")
        reshape = ir.node("Reshape", [concat.outputs[0], _constant(graph, target)], name=f"{node.name}/{value.name}/rows")
        for made in (unsqueeze, concat, reshape):
            graph.insert_before(node, made)
        reshape.outputs[0].shape, reshape.outputs[0].type = ir.Shape([experts, rows, width]), ir.TensorType(value.dtype)
        values.append(reshape.outputs[0])
    return values


def _constant(graph, tensor):
    """A small constant initializer (stored inside the model, not in weights.data)."""
    import onnx_ir as ir

    value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _replace(graph, node, products, join: str, specs: dict) -> None:
    """`node` -> com.microsoft nodes `products` [(op_type, inputs, attrs)], with the same output (name,
    shape, type): one node's, else `join` of theirs ("Concat" on the last axis, or "Sum")."""
    import onnx_ir as ir

    old_inputs = [v for v in node.inputs if v is not None]
    old, name = node.outputs[0], node.outputs[0].name
    made = []
    for i, (op_type, inputs, attrs) in enumerate(products):
        part = ir.node(
            op_type, inputs, attributes=attrs, domain="com.microsoft", name=node.name + (f"/part{i}" if len(products) > 1 else "")
        )
        part.outputs[0].type = old.type
        made.append(part)
    if len(made) > 1:
        attrs = {"axis": -1} if join == "Concat" else {}
        made.append(ir.node(join, [m.outputs[0] for m in made], attributes=attrs, name=f"{node.name}/{join.lower()}"))
    for m in made:
        m.metadata_props.update(node.metadata_props)  # the module scope, for name_by_module
    out = made[-1].outputs[0]
    out.shape, out.type = old.shape, old.type
    # replace_graph_outputs: the lm_head product is `logits` itself in a float32 graph
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    graph.insert_after(node, made)
    graph.remove(node, safe=True)
    old.name, out.name = None, name
    _drop_unused_weights(graph, specs, old_inputs)
