"""Throughput of a backend: prefill tokens/s, decode tokens/s (also at given past lengths), peak memory,
and the machine's memory bandwidth with the decode floor it implies (decode is bandwidth bound)."""

from __future__ import annotations

import resource
import time

import numpy as np

from nemotron_deploy.runtime.decode import left_pad, prefill
from nemotron_deploy.runtime.dtypes import dtype_bytes
from nemotron_deploy.runtime.errors import NemotronDeployError
from nemotron_deploy.runtime.manifest import MANIFEST_FILE, ArtifactError


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
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _decode_rate(backend, ids, mask, steps: int, rounds: int = 3) -> float:
    """Decode tokens/s (summed over the batch) over `steps` steps after the prompt `ids`, timed in up to
    `rounds` equal rounds of one continuing sequence; the best round counts (interference from a
    shared machine only ever slows a round down)."""
    logits, state = prefill(backend, ids, mask)
    tokens = logits.argmax(-1)[:, None].astype(np.int64)
    rounds = min(rounds, steps)
    per_round = steps // rounds
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
            logits, state = backend.step("decode", tokens, mask, state)
            tokens = logits.argmax(-1)[:, None].astype(np.int64)
        best = min(best, time.perf_counter() - start)
    return ids.shape[0] * per_round / best


def run_bench(backend, manifest, prompt_len: int, new_tokens: int, batch: int, past_lengths=(), repeats: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vocab = manifest.model.vocab_size
    ids, mask = left_pad(rng.integers(3, vocab, (batch, prompt_len)).tolist(), 0)
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
        "decode_tokens_per_s": _decode_rate(backend, ids, mask, new_tokens),
        "decode_tokens_per_s_at_past": {},
    }
    for past in past_lengths:
        pids, pmask = left_pad(rng.integers(3, vocab, (batch, past)).tolist(), 0)
        result["decode_tokens_per_s_at_past"][str(past)] = _decode_rate(backend, pids, pmask, new_tokens)
    peak_rss_mb = _peak_rss_mb()  # before the bandwidth test's own buffers
    bandwidth = measure_bandwidth()
    per_token = decode_bytes_per_token(manifest)
    floor = bandwidth / per_token  # single-sequence tokens/s if decode only streamed the weights once
    result.update(
        memory_bandwidth_gb_per_s=bandwidth / 1e9,
        decode_bytes_per_token=per_token,
        decode_floor_tokens_per_s=floor,
        decode_fraction_of_floor=result["decode_tokens_per_s"] / batch / floor,
        peak_rss_mb=peak_rss_mb,
    )
    return result
