"""Each weight once in memory (issue 20): measured in child processes, as memory bounds, not timings.

A float32 artifact is opened and generates with its weights mapped, not copied: anonymous memory and
resident memory stay under the issue's bounds for a synthetic model whose MatMul weights, packed per
session as onnxruntime does by default, would break the anonymous bound. A quantized artifact's packed
weights come from the pre-packed cache (runtime/onnx_prepacked.py): mapped, so the open adds less
anonymous memory than packing in memory does, by about their size; the cache is reused, rebuilt when
damaged, and keyed by what the packed bytes depend on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import relative_error

from nemotron_deploy.exporter import quantize
from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.runtime import onnx_prepacked
from nemotron_deploy.runtime.artifact.manifest import read_manifest
from nemotron_deploy.runtime.decode import left_pad, prefill
from nemotron_deploy.runtime.prefill_budget import MIN_TOKENS, PrefillBudget
from nemotron_deploy.runtime.serving.triton.configs import GENERATE_MODEL
from nemotron_deploy.runtime.session import Session

CHILD = Path(__file__).parents[2] / "benchmarks" / "memory_child.py"
MiB = 2**20

# Dense-heavy on purpose (three wide relu2 MLPs, a 24k vocabulary): 51 M parameters, ~200 MiB of float32
# weights of which ~150 MiB are MatMul weights that onnxruntime would pack (a copy per session).
DENSE = dict(
    TINY_CONFIG,
    vocab_size=65536,
    hidden_size=512,
    hybrid_override_pattern="M-*-E-",
    intermediate_size=6144,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    mamba_num_heads=16,
    mamba_head_dim=32,
    n_groups=2,
    ssm_state_size=32,
    chunk_size=64,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=512,
    moe_shared_expert_intermediate_size=512,
    n_group=1,
    topk_group=1,
    max_position_embeddings=4096,
)


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("dense") / "ckpt", config=DENSE)


@pytest.fixture(scope="module")
def float_artifact(dense_checkpoint, tmp_path_factory):
    return export_artifact(dense_checkpoint, tmp_path_factory.mktemp("dense-f32") / "onnx", progress=False)


@pytest.fixture(scope="module")
def int4_artifact(dense_checkpoint, tmp_path_factory):
    return export_artifact(dense_checkpoint, tmp_path_factory.mktemp("dense-int4") / "onnx", progress=False, quantize="int4")


def measure(artifact: Path, prompt_len: int = 128, **env) -> dict:
    """benchmarks/memory_child.py in a fresh process: open, prefill `prompt_len` tokens, decode 8."""
    cmd = [sys.executable, str(CHILD), str(artifact), "--prompt-len", str(prompt_len), "--new-tokens", "8", "--threads", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()})
    return result


@pytest.mark.parametrize("prompt_len", [128, 1500])
def test_float32_weights_are_mapped_once_not_copied(float_artifact, prompt_len):
    weights = (float_artifact / "weights.data").stat().st_size / MiB
    assert weights > 180  # the synthetic model is as large as the bounds below need
    got = measure(float_artifact, prompt_len)
    assert got["peak_anon_mb"] <= 0.1 * weights + 128, "anonymous memory: the weights (or a packed copy) were copied"
    assert got["peak_pss_mb"] - got["base_pss_mb"] <= 1.15 * weights + 128, "proportional set size above the weights file plus the bound"
    assert got["peak_rss_mb"] - got["base_rss_mb"] <= 1.15 * weights + 128, "resident memory above the weights file plus the bound"


def test_quantized_weights_are_mapped_from_the_prepacked_cache(int4_artifact, monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_prepacked.CACHE_ENV, str(tmp_path / "cache"))
    Session(int4_artifact)  # builds the cache
    cache = _entry(tmp_path / "cache")
    model = onnx_prepacked.load_model(cache / onnx_prepacked.MODEL_FILE)
    packed = sum(end - start for start, end in onnx_prepacked.packed_ranges(model)) / MiB
    assert packed > 25
    mapped = measure(int4_artifact, **{onnx_prepacked.CACHE_ENV: str(tmp_path / "cache")})
    in_memory = measure(int4_artifact, **{onnx_prepacked.CACHE_ENV: "none"})
    assert mapped["tokens"] == in_memory["tokens"]
    weights = (int4_artifact / "weights.data").stat().st_size / MiB
    assert weights > 64  # the synthetic model is as large as the test asks
    assert mapped["peak_anon_mb"] <= 0.1 * weights + 128 and mapped["peak_pss_mb"] - mapped["base_pss_mb"] <= 1.15 * weights + 128
    assert mapped["open_anon_mb"] <= in_memory["open_anon_mb"] - 0.8 * packed, "the packed weights are still copied into the process"
    # no child process either (ctypes.util.find_library forked `ldconfig -p` from the mapped process)
    assert mapped["builder_peak_rss_mb"] == 0, "an open with its cache present started a process"


# One weight over an open's anonymous bound: a 131072 x 1024 lm_head, 144 MiB of a 299 MiB int8 artifact
LARGE_HEAD = dict(
    DENSE, vocab_size=131072, hidden_size=1024, hybrid_override_pattern="M-*-", intermediate_size=1024, head_dim=128, mamba_head_dim=64
)


def test_a_weight_over_the_bound_is_packed_a_part_at_a_time(tmp_path, monkeypatch):
    """An open that maps the cache still packs each weight once more to check it against the cache's
    blob, one weight at a time: the largest packed weight is its anonymous peak. An lm_head whose
    packed copy alone is over 0.1x weights.data + 128 MiB is exported in parts (exporter/quantize.py,
    `part_limit`) and the open stays within the bound; the same lm_head whole does not."""
    ckpt = write_random_checkpoint(tmp_path / "ckpt", config=LARGE_HEAD, dtype="bfloat16")
    split = export_artifact(ckpt, tmp_path / "split", quantize="int8", progress=False, trace_cache=False)
    monkeypatch.setattr(quantize, "part_limit", lambda weights_bytes: 2**40)
    whole = export_artifact(ckpt, tmp_path / "whole", quantize="int8", progress=False, trace_cache=False)
    got = {}
    for artifact in (split, whole):
        cache = {onnx_prepacked.CACHE_ENV: str(tmp_path / f"cache-{artifact.name}")}
        measure(artifact, **cache)  # builds the cache
        got[artifact.name] = measure(artifact, **cache)
    weights = (split / "weights.data").stat().st_size / MiB
    assert weights == pytest.approx((whole / "weights.data").stat().st_size / MiB, rel=1e-3)
    assert got["whole"]["peak_anon_mb"] > 0.1 * weights + 128, "the test's lm_head no longer breaks the bound whole"
    assert got["split"]["peak_anon_mb"] <= 0.1 * weights + 128
    assert got["split"]["tokens"] == got["whole"]["tokens"]


PROMPT = [5, 17, 42, 9, 3, 11]


def _tokens(artifact: Path, cache: onnx_prepacked.CachePolicy) -> list[list[int]]:
    return Session(artifact, cache=cache).generate([PROMPT], 6, ignore_eos=True).new_token_ids


def _entry(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


def test_the_cache_is_reused_and_rebuilt_when_damaged(int4_artifact, tmp_path):
    policy = onnx_prepacked.CachePolicy(directory=tmp_path)
    first = _tokens(int4_artifact, policy)
    assert first == _tokens(int4_artifact, onnx_prepacked.CachePolicy(enabled=False))
    entry = _entry(tmp_path)
    built = (entry / onnx_prepacked.MODEL_FILE).stat().st_mtime_ns
    assert _tokens(int4_artifact, policy) == first
    assert (entry / onnx_prepacked.MODEL_FILE).stat().st_mtime_ns == built, "a second open rebuilt the cache"
    data = entry / onnx_prepacked.DATA_FILE
    with open(data, "r+b") as f:  # damage a packed weight: onnxruntime refuses it, the entry is rebuilt
        start, end = max(
            onnx_prepacked.packed_ranges(onnx_prepacked.load_model(entry / onnx_prepacked.MODEL_FILE)), key=lambda r: r[1] - r[0]
        )
        f.seek((start + end) // 2)
        f.write(b"\xa5" * 64)
    with pytest.warns(UserWarning, match="onnxruntime refused the pre-packed weights cache entry.*rebuilding"):
        assert _tokens(int4_artifact, policy) == first
    rebuilt = (entry / onnx_prepacked.MODEL_FILE).stat().st_mtime_ns
    assert rebuilt != built
    with open(data, "r+b") as f:  # a truncated entry (an interrupted copy): its recorded sizes say so
        f.truncate(data.stat().st_size // 2)
    with pytest.warns(UserWarning, match="damaged pre-packed weights cache entry; rebuilding"):
        assert _tokens(int4_artifact, policy) == first
    assert (entry / onnx_prepacked.MODEL_FILE).stat().st_mtime_ns != rebuilt


def test_a_cache_that_cannot_be_used_falls_back_with_one_warning(int4_artifact, tmp_path, monkeypatch):
    want = _tokens(int4_artifact, onnx_prepacked.CachePolicy(enabled=False))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(
        UserWarning, match=r"a-file/cache: cannot write the pre-packed weights cache there.*packing the weights in memory"
    ) as caught:
        assert _tokens(int4_artifact, onnx_prepacked.CachePolicy(directory=blocker / "cache")) == want
    assert len(caught) == 1
    monkeypatch.setattr(onnx_prepacked, "_free_bytes", lambda path: 3 * 2**30)  # less than 2x weights + the reserve
    monkeypatch.setattr(onnx_prepacked, "_needed_bytes", lambda manifest, graph: 2.5 * 2**30)
    with pytest.warns(UserWarning, match=r"needs about 2.5 GiB and 3.0 GiB are free.*packing the weights in memory"):
        assert _tokens(int4_artifact, onnx_prepacked.CachePolicy(directory=tmp_path / "full")) == want
    assert not [p for p in (tmp_path / "full").iterdir() if not p.name.startswith(".")], "an entry was written without the space for it"


def test_optimize_builds_the_cache_ahead_and_replaces_a_stale_entry(int4_artifact, float_artifact, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nemotron_deploy.runtime.cli import main

    root = tmp_path / "cache"
    done = CliRunner().invoke(main, ["optimize", str(int4_artifact), "--cache-dir", str(root)])
    assert done.exit_code == 0, done.output
    entry = _entry(root)
    assert str(entry) in done.output and "x weights.data" in done.output
    built = (entry / onnx_prepacked.MODEL_FILE).stat().st_mtime_ns
    _tokens(int4_artifact, onnx_prepacked.CachePolicy(directory=root))
    assert (entry / onnx_prepacked.MODEL_FILE).stat().st_mtime_ns == built, "the open after optimize built again"
    # another CPU (or onnxruntime): another key; the entry built for the old one is replaced, not kept
    monkeypatch.setattr(onnx_prepacked, "_cpu_identity", lambda: "another CPU")
    with pytest.warns(UserWarning, match="stale pre-packed weights cache entry"):
        _tokens(int4_artifact, onnx_prepacked.CachePolicy(directory=root))
    assert _entry(root).name != entry.name and not entry.exists() and not (root / f".{entry.name}.lock").exists()
    # --no-cache writes nothing; float artifacts need no cache
    done = CliRunner().invoke(main, ["generate", str(int4_artifact), "--prompt-ids", "5,17,42", "--max-new-tokens", "2", "--no-cache"])
    assert done.exit_code == 0, done.output
    assert not (int4_artifact / ".onnxruntime-cache").exists()
    done = CliRunner().invoke(main, ["generate", str(int4_artifact), "--prompt-ids", "5", "--no-cache", "--cache-dir", str(root)])
    assert done.exit_code != 0 and "give one of them" in done.output
    # a Triton repository builds the entries before its instances open them (they only map them)
    done = CliRunner().invoke(main, ["triton", str(int4_artifact), "-o", str(tmp_path / "repo"), "--cache-dir", str(tmp_path / "served")])
    assert done.exit_code == 0, done.output
    assert (_entry(tmp_path / "served") / onnx_prepacked.ENTRY_FILE).is_file()
    config = (tmp_path / "repo" / GENERATE_MODEL / "config.pbtxt").read_text()
    assert '"prepacked_cache"' in config and str((tmp_path / "served").resolve()) in config
    assert onnx_prepacked.cache_policy(str(tmp_path)) == onnx_prepacked.CachePolicy(directory=tmp_path)
    assert onnx_prepacked.cache_policy(onnx_prepacked.CACHE_OFF).root(int4_artifact) is None
    done = CliRunner().invoke(main, ["optimize", str(float_artifact), "--cache-dir", str(tmp_path / "float")])
    assert done.exit_code == 0 and "no cache needed" in done.output and not (tmp_path / "float").exists()


def test_prefill_pieces_keep_activations_within_the_budget(float_artifact):
    """Deep into a long prompt the pieces shrink (attention scores grow with the past), never below
    MIN_TOKENS; a model with more weights takes longer pieces; the default split leaves tokens as one call."""
    manifest = read_manifest(float_artifact)
    budget = PrefillBudget.of(manifest)
    pieces = [budget.tokens(1, past) for past in (0, 500, 2000, 4000)]
    assert pieces == sorted(pieces, reverse=True) and pieces[0] > pieces[-1] >= MIN_TOKENS
    assert budget.tokens(4, 2000) < budget.tokens(1, 2000)
    for t, past in ((budget.tokens(1, 0), 0), (budget.tokens(1, 2000), 2000)):
        assert t * (past + t) * budget.score_bytes <= budget.budget_bytes and t * budget.token_bytes <= budget.budget_bytes
    backend = Session(float_artifact).backend
    ids, mask = left_pad([list(range(3, 3 + 1500))], 0)
    calls = []
    step = backend.step
    backend.step = lambda graph, ids, *rest: calls.append(ids.shape[1]) or step(graph, ids, *rest)
    split, _ = prefill(backend, ids, mask)
    assert len(calls) > 1 and max(calls) == budget.tokens(1, 0), calls
    whole, _ = prefill(backend, ids, mask, chunk_size=1500)
    assert relative_error(split, whole) <= 1e-4


def _mapped_kib(path: Path) -> int:
    """Rss of this process's mappings of `path` (KiB)."""
    import re

    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            header = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$", line)
            if header:
                current = header.group(1).strip() == str(path.resolve())
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_a_table_read_a_row_at_a_time_maps_only_its_rows(tmp_path):
    """`resident.random_access`: looking up scattered rows of a 64 MiB table that sits in the page cache
    (just written, as a cache entry is) maps about a page per row, not whole read-ahead windows or
    folios (before: 6 embedding rows mapped 2.2 MiB, a 128-token prompt the whole table)."""
    import numpy as np

    from nemotron_deploy.runtime import resident

    table = tmp_path / "table.bin"
    with open(table, "wb") as f:  # written and on disk (a cache entry's builder syncs its files), still in the page cache
        f.write(np.random.default_rng(0).integers(0, 255, 64 * MiB, dtype=np.uint8).tobytes())
        os.fsync(f.fileno())
    table.read_bytes()
    view = np.memmap(table, dtype=np.uint8, mode="r")
    resident.random_access(table, [(0, 64 * MiB)])
    rows = np.random.default_rng(1).choice(64 * MiB // 4096, 100, replace=False) * 4096
    assert int(sum(int(view[r]) for r in rows)) >= 0
    assert _mapped_kib(table) <= 100 * 4 * 4, f"{_mapped_kib(table)} KiB mapped for 100 single-page reads"


def test_pages_read_once_are_given_back_while_a_block_runs(tmp_path):
    """`resident.dropping`: while a session is created (onnxruntime re-reads every stored original to check
    its packed blob), the pages read leave the process as it goes, except the ranges kept (the blobs); a
    control without it keeps them all mapped."""
    import time

    import numpy as np

    from nemotron_deploy.runtime import resident

    data = tmp_path / "model.data"
    data.write_bytes(np.random.default_rng(0).integers(0, 255, 64 * MiB, dtype=np.uint8).tobytes())
    keep = [(0, 4 * MiB)]

    def read_all(view) -> int:
        peak = 0
        for start in range(0, 64 * MiB, MiB):
            int(view[start : start + MiB : 4096].sum())  # one byte per page: the page is mapped
            time.sleep(0.01)
            peak = max(peak, _mapped_kib(data))
        return peak

    control = read_all(np.memmap(data, dtype=np.uint8, mode="r"))
    assert control >= 60 * 1024, f"{control} KiB: the control did not map the file"
    view = np.memmap(data, dtype=np.uint8, mode="r")
    with resident.dropping({data: keep}, interval_s=0.002):
        peak = read_all(view)
    assert peak <= 24 * 1024, f"{peak} KiB mapped at the peak: pages were not given back while the block ran"
    assert _mapped_kib(data) >= 4 * 1024 - 8, "a kept range was given back"


def test_an_entry_stores_only_packed_weights_and_shares_the_rest_with_the_artifact(int4_artifact, tmp_path, monkeypatch):
    """Step 2 of issue 31: the initializers onnxruntime did not pack are read from a hard link of the
    artifact's weights.data (same inode: no bytes on disk, one page cache), the entry's data file holds
    only each packed weight's original and its blob; tokens unchanged. Where no hard link can be made, the
    entry stays as onnxruntime wrote it, and loads."""
    import onnxruntime as ort

    from nemotron_deploy.runtime.prepacked_share import SHARED_FILE, share_with_artifact

    policy = onnx_prepacked.CachePolicy(directory=tmp_path / "cache")
    assert _tokens(int4_artifact, policy) == _tokens(int4_artifact, onnx_prepacked.CachePolicy(enabled=False))
    entry = _entry(tmp_path / "cache")
    assert (entry / SHARED_FILE).stat().st_ino == (int4_artifact / "weights.data").stat().st_ino
    model = onnx_prepacked.load_model(entry / onnx_prepacked.MODEL_FILE)
    places = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data}
    shared = [name for name, info in places.items() if info["location"] == SHARED_FILE]
    packed = [name for name, info in places.items() if any(k.startswith("prepacked") for k in info)]
    assert shared and packed and not set(shared) & set(packed)
    assert all(places[name]["location"] == onnx_prepacked.DATA_FILE for name in packed), "a packed weight left its blob's file"
    kept = sum(int(places[name]["length"]) for name in places if places[name]["location"] == onnx_prepacked.DATA_FILE)
    blobs = sum(end - start for start, end in onnx_prepacked.packed_ranges(model))
    assert (entry / onnx_prepacked.DATA_FILE).stat().st_size <= kept + blobs + 4096 * (len(places) + len(packed))
    stored = onnx_prepacked.stored_bytes(entry)
    assert stored < sum(f.stat().st_size for f in entry.iterdir()) - 0.9 * (int4_artifact / "weights.data").stat().st_size

    # another filesystem (no hard links): the entry as onnxruntime wrote it; onnxruntime loads it
    out = tmp_path / "unshared"
    out.mkdir()
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    onnx_prepacked._build_child(str(int4_artifact / "step.onnx"), str(out))
    assert not (out / SHARED_FILE).exists()
    shared_bytes = sum(int(places[name]["length"]) for name in shared)
    padding = 4096 * len(places)  # each file aligns its tensors its own way
    assert (out / onnx_prepacked.DATA_FILE).stat().st_size >= (entry / onnx_prepacked.DATA_FILE).stat().st_size + shared_bytes - padding
    assert share_with_artifact(out, int4_artifact / "step.onnx", int4_artifact / "weights.data") == 0
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(str(out / onnx_prepacked.MODEL_FILE), options, providers=["CPUExecutionProvider"])
