"""The graph a pre-packed cache entry is built from, with the experts' repeated rows written out first.

A quantized artifact stores each expert's `up` rows once, and its graph repeats them for onnxruntime's
QMoE (an Unsqueeze, a Concat of copies and a Reshape on the stored integers and on their scales:
`_stored_once` in exporter/quantize.py). Building a cache entry (runtime/onnx_prepacked.py), onnxruntime
folds each such chain into a new tensor in memory, packs it, and keeps both until it has saved the
optimized model: the repeated tensors are anonymous memory of the build on top of the packed copies
(the 537M benchmark model's int4 build: 240 MiB of them; its peak fell from 851 to 594 MiB without
them, benchmarks/results/cache_build_cpu.md). Written out here first, expert by
expert, into a file beside a copy of the graph, each repeated tensor is an initializer onnxruntime maps
from that file (file pages, given back under pressure); it packs and saves the same bytes. And one
over onnxruntime's folding limit (FOLD_LIMIT), which onnxruntime itself leaves a Concat computed at
every step (its QMoE then reads that layer's experts unpacked), is packed like the others.

    source = write_out(artifact_graph, folder)   # folder/source.onnx, or None: build from the artifact's
    ... onnxruntime opens `source` and saves the optimized model ...
    remove(folder)                               # the copy, the written-out file and the links
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SOURCE_FILE = "source.onnx"  # the rewritten graph, in the build folder
REPEATED_FILE = "repeated.data"  # the repeated tensors it reads
_ALIGN = 4096  # each written tensor starts on a page (onnxruntime maps external data)
FOLD_LIMIT = 2**30  # onnxruntime (1.32) does not constant-fold an output of more bytes (it warns, and skips)


@dataclass(frozen=True)
class RepeatChain:
    """Unsqueeze(stored, axes=[2]) -> Concat([that] * repeats, axis=2) -> Reshape to (E, R * repeats, W):
    each row of the stored (E, R, W) tensor `repeats` times in a row (numpy's repeat along axis 1)."""

    stored: object  # the stored initializer (onnx TensorProto, external)
    repeats: int
    output: str  # the Reshape's output: the repeated tensor's name
    nodes: tuple  # the chain's nodes that nothing else reads (removed with the Reshape)


def write_out(graph: Path, folder: Path) -> Path | None:
    """`graph` (an artifact's .onnx) rewritten into `folder` with every `RepeatChain` replaced by an
    initializer written to folder/REPEATED_FILE; the graph's own data files hard-linked beside it (a
    model's external data must sit in its folder). None when the graph has no such chain or a file
    cannot be linked (another filesystem): the caller builds from `graph` itself."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    chains = repeat_chains(model.graph)
    if not chains:
        return None
    locations = {_place(t)[0] for t in model.graph.initializer if _place(t)}
    try:
        for location in locations:
            os.link(graph.parent / location, folder / location)
    except OSError:
        remove(folder, locations)
        return None
    with open(folder / REPEATED_FILE, "wb") as out:
        for chain in chains:
            model.graph.initializer.append(_write_repeated(out, graph.parent, chain))
    dropped = {n.output[0] for chain in chains for n in chain.nodes}  # a value has one producer
    kept = [n for n in model.graph.node if not (n.output and n.output[0] in dropped)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    (folder / SOURCE_FILE).write_bytes(model.SerializeToString())
    return folder / SOURCE_FILE


def remove(folder: Path, locations=None) -> None:
    """What `write_out` put in `folder` (the graph's data files' links: `locations`, default every
    file the written-out graph reads but REPEATED_FILE)."""
    import onnx

    if locations is None and (folder / SOURCE_FILE).exists():
        model = onnx.load(str(folder / SOURCE_FILE), load_external_data=False)
        locations = {_place(t)[0] for t in model.graph.initializer if _place(t)} - {REPEATED_FILE}
    for name in [SOURCE_FILE, REPEATED_FILE, *(locations or ())]:
        (folder / name).unlink(missing_ok=True)


def unfoldable(graph) -> list[str]:
    """The repeated tensors of `graph` (a GraphProto) over FOLD_LIMIT: opened as it is (no cache entry
    built by `write_out`), onnxruntime leaves each one a Concat computed at every step, whose QMoE reads
    its experts unpacked (the Nano-30B-widths int8 artifact decoded 8x slower that way)."""
    return [chain.output for chain in repeat_chains(graph) if _place(chain.stored)[2] * chain.repeats > FOLD_LIMIT]


def repeated_bytes(graph) -> int:
    """Bytes of every repeated tensor `write_out` would write for `graph` (a GraphProto; 0 if none)."""
    return sum(_place(chain.stored)[2] * chain.repeats for chain in repeat_chains(graph))


def largest_initializer(graph) -> int:
    """Bytes of the largest external initializer `graph` (a GraphProto) reads once `write_out` has run."""
    stored = [place[2] for place in map(_place, graph.initializer) if place]
    return max(stored + [_place(chain.stored)[2] * chain.repeats for chain in repeat_chains(graph)], default=0)


def repeat_chains(graph) -> list[RepeatChain]:
    """Every `RepeatChain` of `graph` (a GraphProto) whose stored tensor is external data."""
    from onnx import numpy_helper

    producer = {out: n for n in graph.node for out in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    inits = {t.name: t for t in graph.initializer}

    def constant(name):
        return numpy_helper.to_array(inits[name]).tolist() if name in inits else None

    chains = []
    for reshape in graph.node:
        if reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
            continue
        concat = producer.get(reshape.input[0])
        if concat is None or concat.op_type != "Concat" or len(set(concat.input)) != 1 or _int_attr(concat, "axis") != 2:
            continue
        unsqueeze = producer.get(concat.input[0])
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or constant(unsqueeze.input[1]) != [2]:
            continue
        stored = inits.get(unsqueeze.input[0])
        if stored is None or _place(stored) is None or len(stored.dims) != 3:
            continue
        experts, rows, width = stored.dims
        repeats = len(concat.input)
        if constant(reshape.input[1]) != [experts, rows * repeats, width]:
            continue
        nodes = [reshape]  # and what only it reads
        if readers.get(concat.output[0]) == 1:
            nodes.append(concat)
            if readers.get(unsqueeze.output[0]) == repeats:  # the Concat's copies are its only readers
                nodes.append(unsqueeze)
        chains.append(RepeatChain(stored, repeats, reshape.output[0], tuple(nodes)))
    return chains


def _write_repeated(out, folder: Path, chain: RepeatChain):
    """Append the chain's repeated tensor to `out` (page-aligned), one expert at a time from a map of the
    stored bytes. Returns its TensorProto (named as the chain's output, its bytes in REPEATED_FILE)."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    location, offset, length = _place(chain.stored)
    dtype = np.dtype(tensor_dtype_to_np_dtype(chain.stored.data_type))
    experts, rows, width = chain.stored.dims
    if length != experts * rows * width * dtype.itemsize:
        raise ValueError(f"{folder / location}: tensor {chain.stored.name} is {length} bytes, not its shape's")
    stored = np.memmap(folder / location, dtype=dtype, mode="r", offset=offset, shape=(experts, rows, width))
    start = -(-out.tell() // _ALIGN) * _ALIGN
    out.seek(start)
    for expert in stored:
        out.write(np.repeat(expert, chain.repeats, axis=0))  # a contiguous array: written without a copy
    del stored
    tensor = onnx.TensorProto(name=chain.output, data_type=chain.stored.data_type, dims=(experts, rows * chain.repeats, width))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", REPEATED_FILE), ("offset", str(start)), ("length", str(length * chain.repeats))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _place(tensor) -> tuple[str, int, int] | None:
    """(location, offset, length) of an external initializer, else None."""
    info = {e.key: e.value for e in tensor.external_data}
    if "location" not in info or "length" not in info:
        return None
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def _int_attr(node, name: str) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), None)
