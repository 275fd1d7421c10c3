"""The `generate` model for Triton's Python backend (decoupled): our runtime inside the server.

`execute` only parses requests and hands them to a ContinuousBatcher; one thread of this instance
runs the batcher, which streams every token back through the request's response sender (ids, and the
new text when the artifact has a tokenizer, detokenized with the sequence's context). A bad request
gets an error response naming the field, and nothing else stops. A request whose client went away
(stream closed, request cancelled) leaves the batch at the next step.

Model parameters (config.pbtxt, written by `nemotron-deploy triton`): artifact_dir, backend,
max_active_sequences, threads, prefill_chunk_size, exclude_input_in_output, prepacked_cache (the
onnxruntime pre-packed weights cache's root, "off", or empty for the default place).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend's stub

from nemotron_deploy.runtime.continuous import CANCELLED, ContinuousBatcher, Request
from nemotron_deploy.runtime.onnx_prepacked import cache_policy
from nemotron_deploy.runtime.prefix_cache import MIB, PrefixCache, default_budget_mb
from nemotron_deploy.runtime.serving.triton.interface import GenerateRequest, RequestError, parse_generate_request
from nemotron_deploy.runtime.session import Session
from nemotron_deploy.runtime.stop_text import StopText
from nemotron_deploy.runtime.tokenizer import Tokenizer

CANCEL_POLL_S = 0.05  # how often an active request asks the server whether its client is gone
METRICS_PERIOD_S = 0.1


class _Stream:
    """One request's way back: sends its tokens (each one, or all at the end) and notices cancellation."""

    def __init__(self, triton_request, parsed: GenerateRequest, exclude_input: bool, tokenizer: Tokenizer | None):
        self.sender = triton_request.get_response_sender()
        self.parsed = parsed
        self.tokens: list[int] = [] if exclude_input else list(parsed.prompt)
        self.tokenizer = tokenizer
        self.prompt_text = "" if exclude_input or tokenizer is None else tokenizer.decode(list(parsed.prompt))
        # the text as tokens arrive (streamed pieces), ended at a stop string
        self.text = StopText(tokenizer, parsed.stop) if tokenizer is not None and (parsed.streaming or parsed.stop) else None
        self.gone = False
        self._next_poll = 0.0
        self.request = Request(
            parsed.prompt,
            parsed.max_new_tokens,
            parsed.sampling,
            parsed.stop_token_ids,
            text=self.text,
            snapshot_at=parsed.snapshot_at,
            on_token=self.on_token,
            on_error=self.on_error,
            cancelled=self.cancelled,
        )

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self.gone and now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_S
            self.gone = self.sender.is_cancelled()
        return self.gone

    def on_token(self, token: int, finish_reason: str | None) -> None:
        if self.parsed.streaming:
            self._send([token], finish_reason)
            return
        self.tokens.append(token)
        if finish_reason is not None:
            self._send(self.tokens, finish_reason)

    def on_error(self, message: str) -> None:
        """Every request gets a final response, even a cancelled one: Triton holds the request (and
        will not unload the model) until it does."""
        code = pb_utils.TritonError.CANCELLED if message == CANCELLED else pb_utils.TritonError.INTERNAL
        self._send_final(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)))

    def _text(self, tokens: list[int], finish_reason: str | None) -> str:
        if self.parsed.streaming:
            return self.text.piece  # what this token released (the batcher pushed it)
        if self.text is not None and self.text.stopped:  # all at once: the text ends before the stop string
            return self.prompt_text + self.text.text
        return self.tokenizer.decode(tokens)

    def _send(self, tokens: list[int], finish_reason: str | None) -> None:
        outputs = [
            pb_utils.Tensor("output_ids", np.array([[tokens]], dtype=np.int32)),
            pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
            pb_utils.Tensor("finish_reason", np.array([[finish_reason or ""]], dtype=np.object_)),
        ]
        if self.tokenizer is not None:
            outputs.append(pb_utils.Tensor("text_output", np.array([[self._text(tokens, finish_reason)]], dtype=np.object_)))
        response = pb_utils.InferenceResponse(outputs)
        if finish_reason is None:
            try:
                self.sender.send(response)
            except Exception:  # the client is gone: the batcher drops the sequence at its next step
                self.gone = True
        else:
            self._send_final(response)

    def _send_final(self, response) -> None:
        try:
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:
            self.gone = True


class _Metrics:
    """The batcher's counters as Triton metrics (`/metrics`, when the server has metrics on)."""

    NAMES = {
        "decode_steps": "Decode steps run, each for every active sequence",
        "prefill_calls": "Prefill batches run (sequences admitted together)",
        "sequences": "Sequences finished (eos, length, cancelled or failed)",
        "tokens": "Tokens generated",
        "prefill_tokens": "Prompt tokens computed by prefill calls",
        "prefix_cache_hits": "Sequences started from a cached prefix of their prompt",
        "prefix_cache_misses": "Sequences prefilled from the start while the prefix cache is on",
        "prefix_tokens_reused": "Prompt tokens not prefilled thanks to the prefix cache",
    }

    def __init__(self, labels: dict[str, str]):
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.families = {n: pb_utils.MetricFamily(f"nemotron_{n}_total", doc, counter) for n, doc in self.NAMES.items()}
        self.metrics = {n: f.Metric(labels=labels) for n, f in self.families.items()}
        self.gauges = {
            "active": pb_utils.MetricFamily("nemotron_active_sequences", "Sequences in the running batch", gauge),
            "waiting": pb_utils.MetricFamily("nemotron_waiting_sequences", "Sequences queued for a free slot", gauge),
            "prefix_cache_bytes": pb_utils.MetricFamily(
                "nemotron_prefix_cache_bytes", "Bytes of state snapshots the prefix cache holds", gauge
            ),
        }
        self.levels = {n: f.Metric(labels=labels) for n, f in self.gauges.items()}
        self.sent = dict.fromkeys(self.NAMES, 0)
        self.next_flush = 0.0

    def update(self, batcher: ContinuousBatcher, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_flush:
            return
        self.next_flush = now + METRICS_PERIOD_S
        for name, metric in self.metrics.items():
            value = getattr(batcher.counters, name)
            if value != self.sent[name]:
                metric.increment(value - self.sent[name])
                self.sent[name] = value
        for name, metric in self.levels.items():
            metric.set(getattr(batcher, name))


def _prefix_cache(mb: str) -> PrefixCache | None:
    """The `prefix_cache_mb` parameter: MiB, "" for the default (runtime/prefix_cache.py), 0 for none."""
    budget = float(mb) if mb else default_budget_mb()
    return PrefixCache(int(budget * MIB)) if budget > 0 else None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.logger = pb_utils.Logger
        self.session = Session(
            params["artifact_dir"],
            backend=params.get("backend", "onnxruntime"),
            threads=int(params["threads"]) if params.get("threads") else None,
            cache=cache_policy(params.get("prepacked_cache", "")),
        )
        model = self.session.manifest.model
        gen = self.session.manifest.generation
        self.limits = dict(vocab_size=model.vocab_size, max_length=self.session.max_length, eos_token_ids=gen.eos_token_ids)
        self.exclude_input = params.get("exclude_input_in_output", "true").lower() == "true"
        chunk = params.get("prefill_chunk_size")
        backend = self.session.backend
        # a TensorRT engine's profile bounds the batch and the sequence length
        max_batch = min(int(params.get("max_active_sequences", "8")), backend.max_batch or 1 << 30)
        max_length = min(self.session.max_length, backend.max_seq_len or 1 << 30)
        self.limits["max_length"] = max_length
        self.batcher = ContinuousBatcher(
            backend,
            self.session.manifest.states,
            max_batch=max_batch,
            max_length=max_length,
            pad_token_id=gen.pad_token_id or 0,
            prefill_chunk_size=int(chunk) if chunk else None,
            prefix_cache=_prefix_cache(params.get("prefix_cache_mb", "")),
            model=self.session.model_id,
        )
        self.metrics = _Metrics({"model": args["model_name"], "instance": args["model_instance_name"]})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="nemotron-batcher", daemon=True)
        self.thread.start()
        self.logger.log_info(
            f"nemotron-deploy: {params['artifact_dir']} on {self.session.backend.name}, up to {self.batcher.max_batch} sequences per step"
        )

    def _serve(self) -> None:
        self.batcher.run(self.stop, after_step=lambda idle: self.metrics.update(self.batcher, force=idle))

    def execute(self, requests):
        for triton_request in requests:
            self._start(triton_request)
        return None  # decoupled: every response goes through the request's sender

    def _start(self, triton_request) -> None:
        def get(name: str):
            tensor = pb_utils.get_input_tensor_by_name(triton_request, name)
            return None if tensor is None else tensor.as_numpy()

        try:
            parsed = parse_generate_request(get, **self.limits)
            if parsed.stop and self.session.tokenizer is None:
                raise RequestError(
                    f"stop_words: {self.session.manifest.path} has no tokenizer.json, and stop strings are matched on the text"
                )
        except RequestError as e:
            sender = triton_request.get_response_sender()
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        self.batcher.submit(_Stream(triton_request, parsed, self.exclude_input, self.session.tokenizer).request)

    def finalize(self) -> None:
        self.stop.set()
        self.batcher.wake()
        self.thread.join(timeout=10)
        c = self.batcher.counters
        self.logger.log_info(
            f"nemotron-deploy: {c.sequences} sequences, {c.tokens} tokens, {c.decode_steps} decode steps, {c.prefill_calls} prefill batches"
        )
