"""The `generate` model's request interface: the names, dtypes and dims that TensorRT-LLM's
`tensorrt_llm` and `ensemble` models use on Triton, so a client written for those works unchanged.
One table here serves both the config.pbtxt writer and the request parser.

Dims exclude the batch dimension (the models have max_batch_size > 0, as TensorRT-LLM's do, so clients
send a leading batch of 1). Fields TensorRT-LLM has and we do not use (beam_width, bad_words, LoRA, ...)
are not listed: Triton rejects a request that sends one, naming it. Stop strings come as text
(`stop_words`, as TensorRT-LLM's ensemble takes them), matched on the detokenized text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nemotron_deploy.runtime.sampling import Sampling


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # Triton's data type name without TYPE_
    dims: tuple[int, ...]
    optional: bool = True
    doc: str = ""


GENERATE_INPUTS = (
    Field("input_ids", "INT32", (-1,), False, "prompt token ids"),
    Field("input_lengths", "INT32", (1,), doc="prompt length (TensorRT-LLM clients send it; must match input_ids)"),
    Field("request_output_len", "INT32", (1,), False, "maximum new tokens"),
    Field("end_id", "INT32", (1,), doc="stop token (default: the model's EOS ids; -1: none)"),
    Field("pad_id", "INT32", (1,), doc="accepted for compatibility; padding is internal"),
    Field("runtime_top_k", "INT32", (1,), doc="0: no top-k filter"),
    Field("runtime_top_p", "FP32", (1,), doc="in (0, 1]; 1: no top-p filter"),
    Field("temperature", "FP32", (1,), doc="> 0"),
    Field("random_seed", "UINT64", (1,), doc="seed of this request's sampler"),
    Field("seed", "UINT64", (1,), doc="random_seed under the name Triton's OpenAI frontend sends"),
    Field("streaming", "BOOL", (1,), doc="one response per new token (default false: one response)"),
    Field("ignore_eos", "BOOL", (1,), doc="generate request_output_len tokens whatever they are"),
    Field("stop_words", "BYTES", (-1,), doc="stop strings: the sequence ends where one appears in its text, which ends before it"),
    Field("repetition_penalty", "FP32", (1,), doc="> 0; 1: none (transformers' RepetitionPenaltyLogitsProcessor)"),
    Field("presence_penalty", "FP32", (1,), doc="in [-2, 2]; 0: none (the OpenAI API's)"),
    Field("frequency_penalty", "FP32", (1,), doc="in [-2, 2]; 0: none (the OpenAI API's)"),
    Field(
        "snapshot_at",
        "INT32",
        (-1,),
        doc="prompt lengths at which the prefix cache also keeps a state snapshot, e.g. where a chat's "
        "earlier turns end, so that the next turn starts there (nemotron-deploy's own field)",
    ),
)
GENERATE_OUTPUTS = (
    Field("output_ids", "INT32", (-1, -1), doc="(beams=1, tokens): the new token(s) of this response"),
    Field("sequence_length", "INT32", (-1,), doc="(beams=1,): number of tokens in output_ids"),
    Field("finish_reason", "BYTES", (1,), doc="'eos' | 'stop' (a stop string) | 'length' on the final response, '' before"),
)
# TensorRT-LLM's ensemble names for text in / text out, and how they map onto the generate model
TEXT_INPUTS = (
    Field("text_input", "BYTES", (1,), False, "prompt text"),
    Field("max_tokens", "INT32", (1,), False, "maximum new tokens"),
    Field("end_id", "INT32", (1,)),
    Field("top_k", "INT32", (1,)),
    Field("top_p", "FP32", (1,)),
    Field("temperature", "FP32", (1,)),
    Field("random_seed", "UINT64", (1,)),
    Field("seed", "UINT64", (1,)),
    Field("stream", "BOOL", (1,)),
    Field("ignore_eos", "BOOL", (1,)),
    Field("stop_words", "BYTES", (-1,)),
    Field("repetition_penalty", "FP32", (1,)),
    Field("presence_penalty", "FP32", (1,)),
    Field("frequency_penalty", "FP32", (1,)),
)
TEXT_TO_GENERATE = {
    "end_id": "end_id",
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "temperature": "temperature",
    "random_seed": "random_seed",
    "seed": "seed",
    "stream": "streaming",
    "ignore_eos": "ignore_eos",
    "stop_words": "stop_words",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
TEXT_OUTPUTS = (Field("text_output", "BYTES", (-1,), doc="the new text of this response"),)

NUMPY_DTYPES = {"INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64, "FP32": np.float32, "BOOL": np.bool_, "BYTES": np.object_}


class RequestError(ValueError):
    """A bad request; the message names the field. The server answers it with an error response."""


@dataclass(frozen=True)
class GenerateRequest:
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    stop_token_ids: frozenset[int]
    streaming: bool
    stop: tuple[str, ...] = ()
    snapshot_at: tuple[int, ...] = ()  # prompt lengths to keep a prefix-cache snapshot at


def _scalar(get: Callable[[str], np.ndarray | None], name: str, kind: type, default):
    value = get(name)
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{name}: expected one value per request, got shape {list(np.shape(value))}")
    return kind(flat[0])


def parse_generate_request(
    get: Callable[[str], np.ndarray | None], *, vocab_size: int, max_length: int, eos_token_ids: tuple[int, ...]
) -> GenerateRequest:
    """A request's tensors (get(name) -> array with the batch dimension, or None when absent) -> what
    to generate. Raises RequestError naming the first bad field."""
    ids = get("input_ids")
    if ids is None:
        raise RequestError("input_ids: missing")
    ids = np.asarray(ids)
    if ids.ndim == 2 and ids.shape[0] != 1:
        raise RequestError(
            f"input_ids: a batch of {ids.shape[0]} in one request; send one sequence per request (they are batched on the server)"
        )
    prompt = ids.reshape(-1).tolist()
    length = _scalar(get, "input_lengths", int, len(prompt))
    if not 0 <= length <= len(prompt):
        raise RequestError(f"input_lengths: {length}, but input_ids has {len(prompt)} tokens")
    prompt = prompt[:length]
    if not prompt:
        raise RequestError("input_ids: empty prompt; expected at least one token")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"input_ids: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
    if len(prompt) >= max_length:
        raise RequestError(
            f"input_ids: {len(prompt)} tokens leave no room to generate within the model's maximum of {max_length} (max_position_embeddings)"
        )
    max_new = _scalar(get, "request_output_len", int, None)
    if max_new is None:
        raise RequestError("request_output_len: missing")
    if max_new < 1:
        raise RequestError(f"request_output_len: {max_new}; expected >= 1")
    temperature = _scalar(get, "temperature", float, 1.0)
    top_k = _scalar(get, "runtime_top_k", int, 0)
    top_p = _scalar(get, "runtime_top_p", float, 1.0)
    if not temperature > 0:
        raise RequestError(f"temperature: {temperature}; expected a number > 0")
    if top_k < 0:
        raise RequestError(f"runtime_top_k: {top_k}; expected >= 0 (0 disables it)")
    if not 0 < top_p <= 1:
        raise RequestError(f"runtime_top_p: {top_p}; expected a number in (0, 1] (1 disables it)")
    seed = _scalar(get, "random_seed", int, _scalar(get, "seed", int, None))
    end_id = _scalar(get, "end_id", int, None)
    stop = (
        frozenset()
        if _scalar(get, "ignore_eos", bool, False)
        else frozenset(eos_token_ids if end_id is None else [end_id] if end_id >= 0 else [])
    )
    penalties = {name: _scalar(get, name, float, default) for name, default in PENALTIES.items()}
    if not penalties["repetition_penalty"] > 0:
        raise RequestError(f"repetition_penalty: {penalties['repetition_penalty']}; expected a number > 0 (1 disables it)")
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2 <= penalties[name] <= 2:
            raise RequestError(f"{name}: {penalties[name]}; expected a number in [-2, 2] (0 disables it)")
    return GenerateRequest(
        prompt=prompt,
        max_new_tokens=max_new,
        sampling=Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **penalties),
        stop_token_ids=stop,
        streaming=_scalar(get, "streaming", bool, False),
        stop=_strings(get, "stop_words"),
        snapshot_at=_positions(get, "snapshot_at", len(prompt)),
    )


def _positions(get: Callable[[str], np.ndarray | None], name: str, prompt_len: int) -> tuple[int, ...]:
    """An INT32 input's prompt lengths, each in 1..prompt_len; () when absent."""
    value = get(name)
    positions = () if value is None else tuple(int(v) for v in np.asarray(value).reshape(-1))
    bad = [n for n in positions if not 1 <= n <= prompt_len]
    if bad:
        raise RequestError(f"{name}: {bad[0]} is not a prompt length (1..{prompt_len})")
    return positions


PENALTIES = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def _strings(get: Callable[[str], np.ndarray | None], name: str) -> tuple[str, ...]:
    """A BYTES input's strings (UTF-8), empty ones dropped; () when absent."""
    value = get(name)
    if value is None:
        return ()
    out = []
    for item in np.asarray(value, dtype=object).reshape(-1):
        try:
            text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise RequestError(f"{name}: not UTF-8 text") from None
        if text:
            out.append(text)
    return tuple(out)
