"""A pre-packed cache entry built part by part: the build holds one part's packed weights at a time.

onnxruntime packs every weight of a session when it creates it, and keeps each packed copy until the
session has saved its optimized model. Built in one session, a cache entry (runtime/onnx_prepacked.py)
therefore held all of an artifact's packed weights in anonymous memory at once: 1.7-1.8x weights.data
(benchmarks/results/cache_build_cpu.md). That is over issue 31's bound for a first open (1.1x + 256 MiB),
and a full-size model's build would not fit the machine that can serve it. So the build goes in steps:

1. One session saves the optimized graph with packing disabled: `model.onnx` and `model.data` with every
   initializer and no packed copy. Its nodes are the entry's nodes (packing does not change the graph).
2. The nodes that read an external initializer are cut into parts of at most `part_bytes` of such
   initializers. The readers of one initializer always share a part.
3. Each part is a model of its own: those nodes, their initializers (read from `model.data`) and their
   other inputs as graph inputs, typed from the saved graph. It is opened without optimization (its
   nodes are already optimized), packed, and saved. Each packed copy is appended to `model.data`, and
   named in its tensor's external data as onnxruntime writes it (`prepacked_<i>` =
   "<kernel>+<hash of the packed bytes>|<offset>;<length>;<alignment>").

The entry holds the same nodes, initializers and packed bytes as one session's (`entry_content`,
tests/runtime/test_prepack_parts.py). onnxruntime re-packs each weight at load and refuses an entry
whose blob differs. A graph whose nodes hold subgraphs (If, Loop, Scan), or whose values lack a type,
cannot be cut: `PartsUnsupported`, and the caller builds in one session.

    save_in_parts(source_graph, folder, "model.onnx", "model.data", min_external_bytes)
"""

from __future__ import annotations

import os
from pathlib import Path

PART_BYTES = 128 * 2**20  # initializer bytes per part: its packed copies are ~1.5x that (int4, scales and sums)
PART_FILE, PART_SAVED, PART_DATA = "part.onnx", "part-packed.onnx", "part-packed.data"
_ALIGN = 4096  # where each packed copy starts in the data file (as onnxruntime places them)
_COPY_CHUNK = 16 * 2**20


class PartsUnsupported(Exception):
    """The graph cannot be cut into parts (a node with a subgraph, a value without a type)."""


def save_in_parts(
    source: Path, folder: Path, model_file: str, data_file: str, min_external_bytes: int, part_bytes: int = PART_BYTES
) -> int:
    """Save `source` optimized, with its packed weights, as folder/model_file + folder/data_file (as one
    onnxruntime session would with `session.save_external_prepacked_constant_initializers`), packing at
    most `part_bytes` of initializers at a time. Returns the number of parts. Raises PartsUnsupported,
    leaving nothing in `folder`, when the graph cannot be cut."""
    import onnx

    if _has_subgraphs(onnx.load(str(source), load_external_data=False).graph):
        raise PartsUnsupported(f"{source}: a node holds a subgraph")
    _open_and_save(source, folder / model_file, data_file, min_external_bytes, pack=False)
    model = onnx.load(str(folder / model_file), load_external_data=False)
    try:
        parts = [_part_model(model, nodes) for nodes in _cut(model.graph, part_bytes)]
    except PartsUnsupported:
        (folder / model_file).unlink()
        (folder / data_file).unlink(missing_ok=True)
        raise
    tensors = {t.name: t for t in model.graph.initializer}
    for part in parts:
        (folder / PART_FILE).write_bytes(part.SerializeToString())
        try:
            _open_and_save(folder / PART_FILE, folder / PART_SAVED, PART_DATA, min_external_bytes, pack=True)
            _append_packed(folder, folder / data_file, tensors)
        finally:
            for name in (PART_FILE, PART_SAVED, PART_DATA):
                (folder / name).unlink(missing_ok=True)
    (folder / model_file).write_bytes(model.SerializeToString())
    return len(parts)


def save_options(data_file: str, min_external_bytes: int) -> dict[str, str]:
    """onnxruntime's session config entries that save the optimized model with its packed weights: every
    initializer of at least `min_external_bytes` in `data_file`, each packed copy after its original. The
    one-session build uses them as they are (and the cache key hashes them: runtime/onnx_prepacked.py)."""
    return {
        "session.optimized_model_external_initializers_file_name": data_file,
        "session.optimized_model_external_initializers_min_size_in_bytes": str(min_external_bytes),
        "session.save_external_prepacked_constant_initializers": "1",
    }


def _open_and_save(model_path: Path, saved: Path, data_file: str, min_external_bytes: int, pack: bool) -> None:
    """One onnxruntime session of `model_path` that saves its optimized model to `saved` (initializers of
    at least `min_external_bytes` in `data_file` beside it). pack: a part (no optimization, its packed
    weights saved); else the whole graph, optimized, with packing disabled."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(saved)
    entries = save_options(data_file, min_external_bytes)
    if pack:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        entries = {**entries, "session.save_external_prepacked_constant_initializers": "0", "session.disable_prepacking": "1"}
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3  # not its notice that the saved model is for this machine: the cache key says so
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _has_subgraphs(graph) -> bool:
    import onnx

    kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in kinds for n in graph.node for a in n.attribute)


def _cut(graph, part_bytes: int) -> list[list]:
    """The nodes reading external initializers, in graph order, cut into parts of at most `part_bytes` of
    those initializers (a node alone may hold more); the readers of one initializer in one part."""
    sizes = {t.name: _external_length(t) for t in graph.initializer}
    sizes = {name: size for name, size in sizes.items() if size is not None}
    parts: list[list] = []
    part_of: dict[str, int] = {}  # initializer -> index in parts
    held: list[set] = []  # per part, the initializers it reads
    for node in graph.node:
        reads = {name for name in node.input if name in sizes}
        if not reads:
            continue
        joined = sorted({part_of[name] for name in reads if name in part_of})
        if joined:  # a shared initializer: with its other readers (merging parts if several)
            into = joined[0]
            for other in joined[1:]:
                parts[into] += parts[other]
                held[into] |= held[other]
                parts[other], held[other] = [], set()
        elif parts and parts[-1] and sum(sizes[n] for n in held[-1] | reads) <= part_bytes:
            into = len(parts) - 1
        else:
            parts.append([])
            held.append(set())
            into = len(parts) - 1
        parts[into].append(node)
        held[into] |= reads
        for name in held[into]:
            part_of[name] = into
    return [part for part in parts if part]


def _part_model(model, nodes: list):
    """A model of `nodes` alone: the initializers they read (external ones still in the saved data file,
    which sits in the same folder), every other input a graph input, every output a graph output, typed
    from the saved graph's inputs, outputs and value_info."""
    import onnx
    from onnx import helper

    graph = model.graph
    types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    initializers = {t.name: t for t in graph.initializer}
    produced = {o for n in nodes for o in n.output if o}
    reads = list(dict.fromkeys(i for n in nodes for i in n.input if i))
    feeds = [i for i in reads if i not in initializers and i not in produced]
    outputs = [o for n in nodes for o in n.output if o]
    missing = [name for name in feeds + outputs if not types.get(name, onnx.ValueInfoProto()).type.HasField("tensor_type")]
    if missing:
        raise PartsUnsupported(f"no type recorded for {missing[0]}")
    part = helper.make_graph(
        nodes,
        "part",
        [types[i] for i in feeds],
        [types[o] for o in outputs],
        initializer=[initializers[i] for i in reads if i in initializers],
    )
    return helper.make_model(part, opset_imports=model.opset_import, ir_version=model.ir_version)


def _append_packed(folder: Path, data: Path, tensors: dict) -> None:
    """Copy every packed weight the part saved (folder/PART_SAVED, its bytes in PART_DATA) to the end of
    `data` (the entry's data file), each at an _ALIGN boundary, and name it in its tensor of `tensors`."""
    import onnx

    saved = onnx.load(str(folder / PART_SAVED), load_external_data=False)
    src, dst = os.open(folder / PART_DATA, os.O_RDONLY), os.open(data, os.O_WRONLY)
    try:
        end = os.fstat(dst).st_size
        for tensor in saved.graph.initializer:
            for entry in tensor.external_data:
                if not entry.key.startswith("prepacked"):
                    continue
                kernel, *blobs = entry.value.split("|")
                moved = []
                for blob in blobs:
                    offset, length, *rest = blob.split(";")
                    at = -(-end // _ALIGN) * _ALIGN
                    _copy(src, int(offset), int(length), dst, at)
                    moved.append(";".join([str(at), length, *rest]))
                    end = at + int(length)
                tensors[tensor.name].external_data.add(key=entry.key, value="|".join([kernel, *moved]))
    finally:
        os.close(src)
        os.close(dst)


def _copy(src: int, offset: int, length: int, dst: int, at: int) -> None:
    """Bytes [offset, offset + length) of file descriptor `src` to `dst` at `at`: in the kernel where the
    filesystem allows it (no pass through this process's memory), else read and written in chunks."""
    done = 0
    while done < length:
        size = min(length - done, _COPY_CHUNK)
        try:
            copied = os.copy_file_range(src, dst, size, offset + done, at + done)
        except OSError:
            copied = os.pwrite(dst, os.pread(src, size, offset + done), at + done)
        if copied == 0:
            raise OSError(f"{PART_DATA}: ends before byte {offset + length}")
        done += copied


def _external_length(tensor) -> int | None:
    info = {e.key: e.value for e in tensor.external_data}
    return int(info["length"]) if "location" in info and "length" in info else None
