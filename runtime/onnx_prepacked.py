"""Pre-packed weights on disk: what lets an onnxruntime session of a quantized artifact map its weights
instead of copying them.

onnxruntime's MatMulNBits and QMoE kernels re-lay their integer weights at session creation
("pre-packing": into the layout of the CPU's int8 dot-product kernels, with per-block sums), and only
then are they fast (2.6x at one token, docs/export.md). Packed in memory, that is a private copy of
every quantized weight per session and per process. So the first open of a quantized artifact on a
machine saves the optimized graph with its packed weights (onnxruntime's
`session.save_external_prepacked_constant_initializers`) into a cache entry, once; every later open,
in any process, loads that model, and onnxruntime maps the packed weights from the entry's data file:
file pages, which every process that opens the artifact shares. `nemotron-deploy optimize` builds the
entries ahead of time (a container image, a Triton model repository).

    <cache root>/<graph>-<key>/   model.onnx    the optimized step graph
                                  model.data    each packed weight's original, then its packed copy
                                  weights.data  a hard link to the artifact's: the initializers
                                                onnxruntime did not pack (runtime/prepacked_share.py)
                                  entry.json    what the entry was built from, and its files' sizes

The packed layout depends on the CPU's instruction sets, the onnxruntime build and the session options
that shape the graph, so the key hashes the artifact's graph and weights (their SHA-256 in the
manifest), onnxruntime's version and build, the CPU's model and flags, and those options. At open an
entry is used only if its entry.json names this key and its files have the recorded sizes; onnxruntime
itself recomputes each packed weight from its stored original at load and refuses a difference. A
damaged, stale (this artifact, another key) or unloadable entry is rebuilt, with one warning line.

Where (`CachePolicy`): `--cache-dir` / `NEMOTRON_DEPLOY_CACHE` if set, else `<artifact>/.onnxruntime-cache`
when the artifact directory is writable, else `$XDG_CACHE_HOME/nemotron-deploy` (`~/.cache/...`).
`--no-cache` (or `NEMOTRON_DEPLOY_CACHE=none`) opens as onnxruntime does by default: each session packs
in memory. So does an open whose cache cannot be written or would not fit on the disk, with one warning
line. The build runs in a child process, one builder per entry at a time (a lock file): its peak memory
(onnxruntime packs in memory before writing) is never the serving process's, and it packs a part of the
weights at a time (runtime/prepack_parts.py), so that peak is one part's packed copies, not all of them. Float artifacts need no
cache: their MatMuls run as fast unpacked (docs/export.md).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.runtime import repeated_rows
from nemotron_deploy.runtime.artifact.cache_folder import CACHE_ENV, user_cache_folder
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import WEIGHTS_FILE, ArtifactError, Manifest
from nemotron_deploy.runtime.prepack_parts import PART_BYTES, PartsUnsupported, save_in_parts, save_options
from nemotron_deploy.runtime.prepacked_share import SHARED_FILE, share_with_artifact

CACHE_FORMAT = 2  # bump when the cache's layout or build options change
MODEL_FILE, DATA_FILE, ENTRY_FILE = "model.onnx", "model.data", "entry.json"
_MIN_EXTERNAL_BYTES = 1024  # initializers smaller than this stay inside model.onnx
_DISK_RESERVE = 2**30  # never fill the disk: a build leaves at least this much free


@dataclass(frozen=True)
class CachePolicy:
    """Whether and where the pre-packed cache lives (see the module docstring). directory None: the
    environment's NEMOTRON_DEPLOY_CACHE, else beside the artifact, else the user's cache folder."""

    enabled: bool = True
    directory: Path | None = None

    def root(self, artifact: Path) -> Path | None:
        """The cache root for `artifact`, or None when the cache is off."""
        env = os.environ.get(CACHE_ENV, "")
        if not self.enabled or (self.directory is None and env.lower() == "none"):
            return None
        if self.directory is not None:
            return Path(self.directory)
        if env:
            return Path(env)
        if os.access(artifact, os.W_OK):
            return artifact / ".onnxruntime-cache"
        return user_cache_folder()


CACHE_OFF = "off"  # `cache_policy`'s spelling of --no-cache (a Triton model parameter)


def cache_policy(spelled: str) -> CachePolicy:
    """A policy from its one-string form: "off", a directory, or "" for the default place."""
    if spelled == CACHE_OFF:
        return CachePolicy(enabled=False)
    return CachePolicy(directory=Path(spelled) if spelled else None)


class CacheUnavailable(NemotronDeployError):
    """The cache cannot be used for this open (not writable, no disk space, the build failed)."""


def packs(manifest: Manifest, providers: list[str]) -> bool:
    """A quantized artifact on the CPU provider: its kernels pay for pre-packing (float ones do not)."""
    return manifest.quantization is not None and providers == ["CPUExecutionProvider"]


def graph_files(manifest: Manifest) -> list[str]:
    """The artifact's distinct graph files (one for a one-graph artifact, else prefill and decode)."""
    return list(dict.fromkeys(g.file for g in manifest.graphs.values()))


def prepacked_model(manifest: Manifest, graph_file: str, policy: CachePolicy) -> Path | None:
    """The cache entry's optimized model of `graph_file`, built first if missing, damaged or stale; None
    when the cache is off, or (after one warning line) cannot be used: the caller packs in memory."""
    try:
        return ensure_entry(manifest, graph_file, policy)
    except CacheUnavailable as e:
        warnings.warn(f"{e}; packing the weights in memory instead", stacklevel=3)
        return None


def ensure_entry(manifest: Manifest, graph_file: str, policy: CachePolicy) -> Path | None:
    """As `prepacked_model`, raising CacheUnavailable where that one warns (for `optimize`)."""
    root = policy.root(manifest.path)
    if root is None:
        return None
    key = cache_key(manifest, graph_file)
    entry = root / f"{Path(graph_file).stem}-{key}"
    if _valid(entry, key):
        return entry / MODEL_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{entry.name}.lock", "a")
    except OSError as e:
        raise CacheUnavailable(
            f"{root}: cannot write the pre-packed weights cache there ({e.strerror}); choose another with --cache-dir"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per entry; the others wait and then use its result
        if _valid(entry, key):
            return entry / MODEL_FILE
        if entry.exists():
            warnings.warn(f"{entry}: damaged pre-packed weights cache entry; rebuilding it", stacklevel=4)
            shutil.rmtree(entry, ignore_errors=True)
        _drop_stale(root, manifest, graph_file, key)
        _build(manifest, graph_file, entry, key)
    return entry / MODEL_FILE


def discard(model_path: Path, why: str) -> None:
    """Remove an entry that onnxruntime refused to load, with one warning line (it is rebuilt)."""
    warnings.warn(f"{model_path.parent}: onnxruntime refused the pre-packed weights cache entry ({why}); rebuilding it", stacklevel=3)
    shutil.rmtree(model_path.parent, ignore_errors=True)


def load_model(path: Path):
    """A cached ModelProto without its data (for its initializers' places in DATA_FILE)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def packed_ranges(model) -> list[tuple[int, int]]:
    """(start, end) in DATA_FILE of every packed weight of a cached model (its initializers'
    `prepacked_<i>` entries: "<kernel>+<hash>|<offset>;<length>;<alignment>", several joined by '|')."""
    ranges = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key.startswith("prepacked"):
                for blob in entry.value.split("|")[1:]:
                    offset, length = (int(v) for v in blob.split(";")[:2])
                    ranges.append((offset, offset + length))
    return ranges


def entry_content(entry: Path) -> tuple[list, dict]:
    """What an entry holds, by content, wherever its bytes sit: its nodes (op, domain, inputs, outputs,
    attributes; an input that is a constant inside the model by its value, not its name: onnxruntime
    names a deduplicated constant after whichever copy it met first), and per external initializer its
    shape, type and the SHA-256 of its bytes and of each packed blob's. Two builds of one graph saved
    the same entry when these are equal (their files' layouts may differ)."""
    from onnx import numpy_helper

    model = load_model(entry / MODEL_FILE)
    constants, tensors = {}, {}
    for tensor in model.graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        if "length" not in info:
            value = numpy_helper.to_array(tensor)
            constants[tensor.name] = (str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest())
            continue
        with open(entry / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            digests = [hashlib.sha256(f.read(int(info["length"]))).hexdigest()]
            for key, value in sorted(info.items()):
                if key.startswith("prepacked"):
                    kernel, *blobs = value.split("|")
                    for blob in blobs:
                        offset, length = (int(v) for v in blob.split(";")[:2])
                        f.seek(offset)
                        digests.append((kernel, hashlib.sha256(f.read(length)).hexdigest()))
        tensors[tensor.name] = (list(tensor.dims), tensor.data_type, digests)
    nodes = [
        (n.op_type, n.domain, [constants.get(i, i) for i in n.input], list(n.output), [a.SerializeToString() for a in n.attribute])
        for n in model.graph.node
    ]
    return nodes, tensors


def stored_bytes(entry: Path) -> int:
    """Bytes an entry adds on disk: its files, less the hard link that shares the artifact's weights.data."""
    total = 0
    for f in entry.iterdir():
        info = f.stat()
        if not (f.name == SHARED_FILE and info.st_nlink > 1):
            total += info.st_size
    return total


def cache_key(manifest: Manifest, graph_file: str) -> str:
    """What the packed bytes depend on: the graph and weights, onnxruntime, the CPU, the build options."""
    import onnxruntime as ort

    digests = {f.name: f.sha256 or f"{f.bytes} bytes" for f in manifest.files}
    parts = {
        "format": CACHE_FORMAT,
        "graph": digests.get(graph_file),
        "weights": digests.get(WEIGHTS_FILE),
        "onnxruntime": [ort.__version__, ort.get_build_info() if hasattr(ort, "get_build_info") else ""],
        "cpu": _cpu_identity(),
        "options": _BUILD_OPTIONS,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _cpu_identity() -> str:
    """The CPU model and its feature flags (the kernels' packing depends on the instruction sets)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _valid(entry: Path, key: str) -> bool:
    """The entry is complete and was built for `key`: entry.json says so and the files have its sizes."""
    try:
        record = json.loads((entry / ENTRY_FILE).read_text())
        return record["key"] == key and all((entry / name).stat().st_size == size for name, size in record["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _drop_stale(root: Path, manifest: Manifest, graph_file: str, key: str) -> None:
    """Entries of this artifact's graph built for another key (another onnxruntime, a re-export): replaced."""
    for other in root.glob(f"{Path(graph_file).stem}-*/{ENTRY_FILE}"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(other.read_text())
            if record["artifact"] == str(manifest.path.resolve()) and record["graph"] == graph_file and record["key"] != key:
                warnings.warn(
                    f"{other.parent}: stale pre-packed weights cache entry of {manifest.path} (built for another onnxruntime, CPU or export); replacing it",
                    stacklevel=5,
                )
                shutil.rmtree(other.parent, ignore_errors=True)
                (root / f".{other.parent.name}.lock").unlink(missing_ok=True)


def _needed_bytes(manifest: Manifest, graph) -> int:
    """What a build writes, at most: the optimized graph's initializers (weights.data's and the experts'
    repeated rows, `repeated`) with a packed copy of each quantized one (measured: 1.5x its stored bytes,
    scales and block sums included), the repeated rows written out before (runtime/repeated_rows.py), one
    part's initializers and packed copies while it is packed (runtime/prepack_parts.py), and the graph. The
    initializers it shares with the artifact are then given back (prepacked_share.py)."""
    weights = next((f.bytes for f in manifest.files if f.name == WEIGHTS_FILE), 0)
    repeated = repeated_rows.repeated_bytes(graph)
    part = max(PART_BYTES, repeated_rows.largest_initializer(graph))
    return 5 * (weights + repeated + part) // 2 + repeated + 64 * 2**20


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _build(manifest: Manifest, graph_file: str, entry: Path, key: str, builder_flags: tuple[str, ...] = ()) -> None:
    """Build `entry` in a child process; atomic: the directory appears whole, with entry.json.
    builder_flags: the builder's (`_main`: only to measure the build without one of its steps, bench_cache_build.py)."""
    from nemotron_deploy.runtime.artifact.atomic import make_staging, new_directory

    graph = _read_graph(manifest.path / graph_file)
    need, free = _needed_bytes(manifest, graph), _free_bytes(entry.parent)
    if free < need + _DISK_RESERVE:
        raise CacheUnavailable(
            f"{entry.parent}: the pre-packed weights cache needs about {need / 2**30:.1f} GiB and "
            f"{free / 2**30:.1f} GiB are free (keeping {_DISK_RESERVE / 2**30:.0f} GiB); choose another with --cache-dir"
        )
    try:
        with new_directory(entry, make_staging(entry)) as staging:
            if "--as-is" not in builder_flags:
                _warn_if_unlinkable(manifest.path / graph_file, graph, staging)
            cmd = [
                sys.executable,
                "-m",
                "nemotron_deploy.runtime.onnx_prepacked",
                str(manifest.path / graph_file),
                str(staging),
                *builder_flags,
            ]
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                how = "was killed (out of memory?)" if done.returncode < 0 else f"exited with {done.returncode}"
                tail = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
                raise CacheUnavailable(
                    f"{manifest.path / graph_file}: building its pre-packed weights in {entry} failed: the builder {how}: {tail}"
                )
            files = {name: (staging / name).stat().st_size for name in (MODEL_FILE, DATA_FILE, SHARED_FILE) if (staging / name).exists()}
            for name in files:  # on disk before entry.json vouches for them (and clean pages: resident.random_access)
                _sync(staging / name)
            record = {"key": key, "artifact": str(manifest.path.resolve()), "graph": graph_file, "files": files}
            (staging / ENTRY_FILE).write_text(json.dumps(record, indent=1) + "\n")
    except NemotronDeployError as e:  # staging: the folder is not writable (make_staging's message)
        raise CacheUnavailable(str(e)) from None
    except OSError as e:
        raise CacheUnavailable(f"{entry}: cannot write the pre-packed weights cache entry ({e.strerror})") from None


def _read_graph(path: Path):
    """The GraphProto of an artifact's graph file (no weights), or ArtifactError naming the file."""
    try:
        return load_model(path).graph
    except Exception as e:  # onnx raises protobuf's DecodeError, among others, for a damaged file
        raise ArtifactError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None


def _warn_if_unlinkable(path: Path, graph, staging: Path) -> None:
    """One warning line where the build cannot write the repeated expert rows out (runtime/repeated_rows.py
    needs a hard link of the artifact's data in the cache's folder: not across filesystems) and onnxruntime
    will not fold some of them itself (over its limit): those layers' experts would run unpacked."""
    names = repeated_rows.unfoldable(graph)
    if not names:
        return
    probe = staging / ".link-probe"
    try:
        os.link(path.with_name(WEIGHTS_FILE), probe)
        probe.unlink()
    except OSError:
        warnings.warn(
            f"{staging.parent}: the pre-packed weights cache is on another filesystem than {path.parent} (no hard link), so its "
            f"build cannot write out QMoE's repeated expert weights, and onnxruntime does not fold {len(names)} of them (over its "
            f"{repeated_rows.FOLD_LIMIT >> 30} GiB folding limit): those layers' experts will run unpacked, several times slower; "
            "keep the cache on the artifact's filesystem (--cache-dir)",
            stacklevel=6,
        )


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_BUILD_OPTIONS = save_options(DATA_FILE, _MIN_EXTERNAL_BYTES)  # with onnxruntime's default optimization level (all)


def _build_child(graph_path: str, out: str, write_repeats: bool = True, in_parts: bool = True, part_bytes: int = PART_BYTES) -> None:
    """Save the optimized model of `graph_path` and its packed weights to `out`.
    write_repeats: build from a copy of the graph whose repeated expert rows are written out to a file
    first (runtime/repeated_rows.py: not held in memory by the build); False builds from the graph as it is.
    in_parts: pack `part_bytes` of weights at a time (runtime/prepack_parts.py: the build holds one part's
    packed copies, not all of them); False, or a graph that cannot be cut, packs all in one session."""
    source = repeated_rows.write_out(Path(graph_path), Path(out)) if write_repeats else None
    try:
        if not (in_parts and _built_in_parts(source or Path(graph_path), Path(out), part_bytes)):
            _build_in_one_session(source or Path(graph_path), Path(out))
    finally:
        if source is not None:
            repeated_rows.remove(Path(out))
    share_with_artifact(Path(out), Path(graph_path), Path(graph_path).with_name(WEIGHTS_FILE), MODEL_FILE, DATA_FILE)


def _built_in_parts(source: Path, out: Path, part_bytes: int) -> bool:
    """runtime/prepack_parts.py's build; False (nothing written) for a graph it cannot cut."""
    try:
        save_in_parts(source, out, MODEL_FILE, DATA_FILE, _MIN_EXTERNAL_BYTES, part_bytes)
        return True
    except PartsUnsupported:
        return False


def _build_in_one_session(source: Path, out: Path) -> None:
    """One onnxruntime session of `source` that packs every weight and saves the optimized model with them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out / MODEL_FILE)
    for key, value in _BUILD_OPTIONS.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3  # not its notice that the saved model is for this machine: the key says so
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _main(argv: list[str]) -> None:
    """The builder's command line: GRAPH OUT [--as-is] [--one-session] [--part-mib N] (the last three to
    measure the build without each step: bench_cache_build.py, the tests)."""
    parser = argparse.ArgumentParser(prog="python -m nemotron_deploy.runtime.onnx_prepacked")
    parser.add_argument("graph")
    parser.add_argument("out")
    parser.add_argument("--as-is", action="store_true", help="build from the graph as it is (the repeated rows folded in memory)")
    parser.add_argument("--one-session", action="store_true", help="pack every weight in one session")
    parser.add_argument("--part-mib", type=float, default=PART_BYTES / 2**20, help="weights packed per part (MiB)")
    args = parser.parse_args(argv)
    _build_child(args.graph, args.out, not args.as_is, not args.one_session, int(args.part_mib * 2**20))


if __name__ == "__main__":
    _main(sys.argv[1:])
