"""What the traced graph says about each weight before its bytes exist: a `WeightSpec` (which model
parameter, which dtype, which layout changes) and a placeholder initializer bound to the checkpoint later.

Layouts (applied in order, each on a block of rows by exporter/weight_stream.py):
    ("transpose", perm)   a permutation of the axes (torch.permute semantics)
    ("repeat_rows", r)    every row of axis 1 repeated r times, interleaved (torch.repeat_interleave)
    ("slice", (axis, start, stop))
                          indices start..stop-1 of `axis` (one part of a weight split across nodes:
                          exporter/quantize.py); on axis 0 only as the first layout of an unstacked weight
    ("quantize", (bits, block, part))
                          block-wise integers along the last axis (exporter/quantize.py); `part` is
                          "weights" (packed uint8) or "scales" (float32): one stored tensor each
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir


@dataclass(frozen=True)
class WeightSpec:
    """One initializer, described: model parameter `param` in `dtype` (torch name) after `layouts`."""

    param: str
    dtype: str
    layouts: tuple[tuple, ...] = ()

    def with_layout(self, *layout) -> "WeightSpec":
        return WeightSpec(self.param, self.dtype, (*self.layouts, tuple(layout)))

    def with_dtype(self, dtype: str) -> "WeightSpec":
        return WeightSpec(self.param, dtype, self.layouts)  # a cast commutes with every layout here

    def to_json(self) -> dict:
        return {"param": self.param, "dtype": self.dtype, "layouts": [list(layout) for layout in self.layouts]}

    @classmethod
    def from_json(cls, raw: dict) -> "WeightSpec":
        return cls(raw["param"], raw["dtype"], tuple((kind, tuple(arg) if isinstance(arg, list) else arg) for kind, arg in raw["layouts"]))


def layout_shape(shape: tuple[int, ...], layouts: tuple[tuple, ...]) -> tuple[int, ...]:
    for kind, arg in layouts:
        if kind == "transpose":
            shape = tuple(shape[i] for i in arg)
        elif kind == "repeat_rows":
            shape = (shape[0], shape[1] * arg, *shape[2:])
        elif kind == "slice":
            axis, start, stop = arg
            shape = (*shape[:axis], stop - start, *shape[axis + 1 :])
        elif kind == "quantize":
            bits, block, part = arg
            shape = (*shape[:-1], shape[-1] // block, *((block * bits // 8,) if part == "weights" else ()))
        else:
            raise ValueError(f"unknown weight layout {kind!r}")
    return shape


def placeholder_value(name: str, dtype: ir.DataType, shape: ir.Shape) -> ir.Value:
    """An initializer value whose data is bound later from the checkpoint (see onnx_export)."""

    def unbound():
        raise RuntimeError(f"weight {name!r} was not bound to the checkpoint before use")

    tensor = ir.LazyTensor(unbound, dtype=dtype, shape=shape, name=name)
    return ir.Value(name=name, shape=shape, type=ir.TensorType(dtype), const_value=tensor)


def predicted_specs(model, dtype: str, min_bytes: int = 0) -> list[WeightSpec]:
    """The specs the onnxruntime float32 step graph gives its largest weights, known before it is
    traced, so that they can be streamed while it is (exporter/onnx_export.py): every `nn.Linear`
    weight read as MatMul's (in, out), i.e. transposed, and every `nn.Embedding` as stored. In model
    parameter order (a tied weight once), those over `min_bytes` (smaller ones stay inside the .onnx).
    The graph passes (`fold_weight_layouts`) are what decide: an export checks that the graph uses each
    of these, and streams everything again if it does not."""
    from torch import nn

    from nemotron_deploy.exporter.modeling.mlp import MoE

    # an MoE's latent projections see the tokens flattened to (N, E): a 2-D Linear, exported as Gemm
    # reading the weight as stored
    flat = {f"{name}.{child}" for name, module in model.named_modules() if isinstance(module, MoE) for child, _ in module.named_children()}
    predicted = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name not in flat:
            predicted.append(WeightSpec(f"{name}.weight", dtype, (("transpose", (1, 0)),)))
        elif isinstance(module, nn.Embedding):
            predicted.append(WeightSpec(f"{name}.weight", dtype))
    params = dict(model.named_parameters())  # a tied weight has one name
    return [s for s in predicted if s.param in params and params[s.param].numel() * params[s.param].element_size() > min_bytes]
