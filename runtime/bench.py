"""Throughput of a backend: prefill tokens/s, decode tokens/s (also at given past lengths), peak memory,
and the machine's memory bandwidth with the decode floor it implies (decode is bandwidth bound)."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from nemotron_deploy.runtime.artifact.dtypes import dtype_bytes
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE, WEIGHTS_FILE, ArtifactError
from nemotron_deploy.runtime.decode import generate, left_pad, prefill
from nemotron_deploy.runtime.memory import PeakMemory, process_peak_rss_mib


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth in bytes/s (bytes read + written per copy), best of `repeats`."""
    src = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def decode_bytes_per_token(manifest) -> int:
    """Weight bytes one decode step reads for one sequence: every weight but the experts a token skips.
    The exporter records it (at the stored precision, quantized or not); older artifacts: from the config."""
    if manifest.model.decode_weight_bytes:
        return manifest.model.decode_weight_bytes
    from nemotron_deploy.exporter.config import ModelConfig
    from nemotron_deploy.exporter.parameters import active_parameters

    try:
        cfg = ModelConfig.from_hf(manifest.model.config)
    except NemotronDeployError as e:
        raise ArtifactError(f"{manifest.path / MANIFEST_FILE}: field 'model.config' is damaged ({e})") from None
    embedding_rows = cfg.vocab_size * cfg.hidden_size  # a lookup reads one row, not the table
    return (active_parameters(cfg) - embedding_rows) * dtype_bytes(manifest.dtype)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM where Linux has it: ru_maxrss also keeps the peak of
    the process that forked us (it survives exec), e.g. a large Python parent."""
    peak = process_peak_rss_mib()
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_figures(manifest, memory: PeakMemory | None) -> dict:
    """Peak RSS (the process's), peak anonymous memory and peak PSS (sampled from `memory`'s start, which
    the CLI starts before opening the backend), each also as a ratio to weights.data; where the open
    built the pre-packed cache (runtime/onnx_prepacked.py, a child process), its builder's peak
    anonymous memory (peak_cache_build_anon_mb) when `memory` samples children. PSS counts a page
    that two sessions or processes map once (divided among them); RSS once per mapping."""
    weights_mb = next((f.bytes for f in manifest.files if f.name == WEIGHTS_FILE), 0) / 2**20
    rss = _peak_rss_mb()
    figures = {"weights_mb": weights_mb, "peak_rss_mb": rss, "peak_rss_x_weights": rss / weights_mb if weights_mb else None}
    if memory is not None:
        memory.stop()
        builder = memory.children_anon_mib or None  # a first open built the pre-packed cache in a child process
        for name, mib in (("anon", memory.anon_mib), ("pss", memory.pss_mib), ("cache_build_anon", builder)):
            if mib is not None:
                figures.update({f"peak_{name}_mb": mib, f"peak_{name}_x_weights": mib / weights_mb if weights_mb else None})
    return figures


def _decode_rate(backend, prompts: list[list[int]], steps: int, rounds: int = 3) -> float:
    """Decode tokens/s (summed over the batch) over `steps` steps after `prompts`, on the decode loop
    itself (`generate`, greedy, no EOS): the time between token arrivals, in up to `rounds` equal rounds
    of the one continuing sequence; the best round counts (interference from a shared machine only
    ever slows a round down)."""
    arrivals = []  # when each step's tokens arrived: the first after the prefill, then one per decode step

    def on_token(row: int, token: int) -> None:
        if row == 0:
            arrivals.append(time.perf_counter())

    generate(backend, prompts, max_new_tokens=steps + 1, max_length=sys.maxsize, on_token=on_token)
    rounds = min(rounds, steps)
    per_round = steps // rounds
    best = min(arrivals[(i + 1) * per_round] - arrivals[i * per_round] for i in range(rounds))
    return len(prompts) * per_round / best


def _memory_pass(backend, prompts: list[list[int]], past_prompts: list[list[list[int]]], steps: int) -> None:
    """The timed work once, untimed, for the memory sampler: the prompt's prefill as it is timed, then
    the prompt's and each past length's generation (their prefill and a few decode steps: a decode
    step's memory does not grow with the steps but by one K/V row each)."""
    ids, mask = left_pad(prompts, 0)
    prefill(backend, ids, mask)
    for batch in (prompts, *past_prompts):
        generate(backend, batch, max_new_tokens=steps, max_length=sys.maxsize)


def run_bench(
    backend,
    manifest,
    prompt_len: int,
    new_tokens: int,
    batch: int,
    past_lengths=(),
    repeats: int = 3,
    seed: int = 0,
    memory: PeakMemory | None = None,
) -> dict:
    """Prefill and decode throughput and peak memory (see `memory_figures`) of `backend`.

    `memory` (started before the open) samples while the same work runs once untimed (`_memory_pass`),
    and is stopped before anything is timed: its thread reads /proc every few milliseconds, and on a
    2-core machine it took a core from the step's threads (measured: decode at 2 threads 10-20 % slower).
    """
    rng = np.random.default_rng(seed)
    vocab = manifest.model.vocab_size
    prompts = rng.integers(3, vocab, (batch, prompt_len)).tolist()
    past_prompts = [rng.integers(3, vocab, (batch, past)).tolist() for past in past_lengths]
    if memory is not None:
        _memory_pass(backend, prompts, past_prompts, steps=min(new_tokens, 4) + 1)
        memory.stop()  # its peaks are kept; peak RSS (VmHWM) is the kernel's, exact over the whole run
    ids, mask = left_pad(prompts, 0)
    prefill(backend, ids[:, : min(prompt_len, 8)], mask[:, : min(prompt_len, 8)])  # warm-up
    prefill_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prefill(backend, ids, mask)
        prefill_times.append(time.perf_counter() - start)
    result = {
        "backend": backend.name,
        "dtype": manifest.dtype,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch * prompt_len / min(prefill_times),
        "decode_tokens_per_s": _decode_rate(backend, prompts, new_tokens),
        "decode_tokens_per_s_at_past": {
            str(past): _decode_rate(backend, past_batch, new_tokens) for past, past_batch in zip(past_lengths, past_prompts)
        },
    }
    result.update(memory_figures(manifest, memory))  # before the bandwidth test's own buffers
    bandwidth = measure_bandwidth()
    per_token = decode_bytes_per_token(manifest)
    floor = bandwidth / per_token  # single-sequence tokens/s if decode only streamed the weights once
    result.update(
        memory_bandwidth_gb_per_s=bandwidth / 1e9,
        decode_bytes_per_token=per_token,
        decode_floor_tokens_per_s=floor,
        decode_fraction_of_floor=result["decode_tokens_per_s"] / batch / floor,
    )
    return result
