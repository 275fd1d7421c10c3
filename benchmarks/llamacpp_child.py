"""llama.cpp's side of bench_vs_llamacpp.py, in a child process of its own.

    convert SRC CHECKPOINT OUT.gguf   (our environment: torch, transformers) the checkpoint's safetensors to an
                                      F32 GGUF with llama.cpp's own convert_hf_to_gguf.py from source tree SRC
    quantize IN.gguf OUT.gguf TYPE    (llama.cpp's environment) llama_model_quantize to TYPE (Q8_0, Q4_0, Q4_K_M)
    measure GGUF THREADS PROMPT NEW VOCAB [--past N] [--logits OUT.npy]
                                      (llama.cpp's environment) prefill and decode tokens/s, printed as one JSON line

`measure` follows `nemotron-deploy bench` (runtime/bench.py) step for step, so the two engines' figures mean the
same thing: the prompt is the same random token ids (numpy's default_rng(0), ids 3..vocab-1), a warm-up prefill of
8 tokens, the prompt's prefill the best of 3 (memory cleared before each), then greedy decode of NEW + 1 tokens
after it, the best of 3 equal rounds of the time between tokens' arrivals.
"""

from __future__ import annotations

import json
import resource
import sys
import time

QUANT_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}  # llama_ftype values (llama.h)


def convert(src: str, checkpoint: str, out: str) -> None:
    """convert_hf_to_gguf.py, F32. Its tokenizer check knows the published models' pre-tokenizers by hash and
    refuses any other: a benchmark checkpoint's tokenizer is not one of them, and the timings never tokenize
    (they feed token ids), so the default pre-tokenizer is taken."""
    import runpy

    sys.path[:0] = [src, f"{src}/gguf-py"]
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
    script = f"{src}/convert_hf_to_gguf.py"
    sys.argv = [script, checkpoint, "--outtype", "f32", "--outfile", out]
    runpy.run_path(script, run_name="__main__")


def quantize(source: str, out: str, kind: str, threads: int = 2) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize {source} -> {kind} failed")


def measure(
    gguf: str, threads: int, prompt_len: int, new_tokens: int, vocab: int, past: list[int], logits_out: str | None, kv_f32: bool = False
) -> dict:
    import llama_cpp
    import numpy as np

    context = max([prompt_len, *past]) + new_tokens + 16
    kv = dict(type_k=0, type_v=0) if kv_f32 else {}  # GGML_TYPE_F32; llama.cpp's default K/V cache is float16
    llm = llama_cpp.Llama(
        gguf, n_threads=threads, n_threads_batch=threads, n_ctx=context, n_batch=context, n_ubatch=512, verbose=False, **kv
    )
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, vocab, (1, prompt_len))[0].tolist()  # the ids run_bench draws first

    def last_logits() -> np.ndarray:  # of the last token evaluated (eval keeps no copy unless logits_all)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

    def prefill(ids: list[int]) -> float:
        llm.reset()
        llm._ctx.kv_cache_clear()  # the recurrent (Mamba) states and K/V: a new sequence
        start = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - start

    def decode_rate(ids: list[int], rounds: int = 3) -> float:
        prefill(ids)
        arrivals = []
        for _ in range(new_tokens + 1):
            token = int(np.argmax(last_logits()))
            arrivals.append(time.perf_counter())
            llm.eval([token])
        per_round = new_tokens // rounds
        return per_round / min(arrivals[(i + 1) * per_round] - arrivals[i * per_round] for i in range(rounds))

    prefill(prompt[:8])  # warm-up
    prefill_s = min(prefill(prompt) for _ in range(3))
    if logits_out:
        np.save(logits_out, np.array(last_logits()[:vocab], dtype=np.float32))
    result = {
        "prefill_tokens_per_s": prompt_len / prefill_s,
        "decode_tokens_per_s": decode_rate(prompt),
        "decode_tokens_per_s_at_past": {str(p): decode_rate(rng.integers(3, vocab, (1, p))[0].tolist()) for p in past},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(),
    }
    return result


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "convert":
        convert(*args)
    elif command == "quantize":
        quantize(*args)
    elif command == "measure":
        gguf, threads, prompt_len, new_tokens, vocab, *rest = args
        past = [int(rest[i + 1]) for i, a in enumerate(rest) if a == "--past"]
        logits = next((rest[i + 1] for i, a in enumerate(rest) if a == "--logits"), None)
        print(json.dumps(measure(gguf, int(threads), int(prompt_len), int(new_tokens), int(vocab), past, logits, "--kv-f32" in rest)))
    else:
        raise SystemExit(f"unknown command {command!r}: convert, quantize or measure")


if __name__ == "__main__":
    main()
