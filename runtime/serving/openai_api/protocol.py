"""The OpenAI API's requests as we serve them: a `/v1/completions` or `/v1/chat/completions` body ->
a `Plan` (the prompt's token ids and the generate model's inputs); anything we cannot do -> `ApiError`
(HTTP 400, the API's error object, naming the field), never a server error.

Semantics follow the OpenAI API and vLLM where they differ from ours: `temperature` 0 is greedy and an
omitted temperature is the checkpoint's generation_config (greedy where it says do_sample false), else
1; completions default to 16 new tokens and chat to the rest of the context; `max_tokens` past the
context is cut to it (finish reason "length"); `stop` is one string or up to 4; `developer` messages
are system messages to the template. Extras vLLM accepts: `top_k`, `repetition_penalty`, `ignore_eos`,
`chat_template_kwargs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from nemotron_deploy.runtime.chat_template import ChatTemplate, ChatTemplateError
from nemotron_deploy.runtime.tokenizer import Tokenizer

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI API's default for /v1/completions
MAX_STOP_STRINGS = 4
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class ApiError(Exception):
    """An error the client caused (or could not be served), as the OpenAI API reports it."""

    status: int
    message: str
    param: str | None = None
    type: str = "invalid_request_error"
    code: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ModelInfo:
    """What the endpoints need to know of the served artifact."""

    name: str  # the `model` clients send
    vocab_size: int
    max_length: int  # max_position_embeddings
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    greedy_default: bool = False  # generation_config.json: do_sample false
    temperature_default: float | None = None
    top_p_default: float | None = None
    top_k_default: int | None = None


@dataclass(frozen=True)
class Plan:
    """One request for the generate model (runtime/serving/triton/interface.py's inputs)."""

    prompt_ids: list[int]
    max_tokens: int
    inputs: dict[str, object] = field(default_factory=dict)  # sampling, penalties, stop_words, ignore_eos
    stream: bool = False
    include_usage: bool = False


def completion_plan(body: Mapping, model: ModelInfo) -> Plan:
    """A /v1/completions body -> Plan."""
    _common_checks(body, model)
    for name in ("echo", "suffix"):
        if body.get(name):
            raise ApiError(400, f"{name} is not supported", name)
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of: only 1 is supported", "best_of")
    if body.get("logprobs") is not None:
        raise ApiError(400, "logprobs are not supported", "logprobs")
    ids = _prompt_ids(body.get("prompt"), model)
    return _plan(body, model, ids, _integer(body, "max_tokens", 1, None, COMPLETIONS_DEFAULT_MAX_TOKENS))


def chat_plan(body: Mapping, model: ModelInfo) -> Plan:
    """A /v1/chat/completions body -> Plan (the messages rendered with the checkpoint's chat template)."""
    _common_checks(body, model)
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise ApiError(400, "logprobs are not supported", "logprobs")
    for name in ("tools", "functions"):
        if body.get(name):
            raise ApiError(400, f"{name} (function calling) are not supported", name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise ApiError(400, f"{name} is not supported", name)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, Mapping) or fmt.get("type") != "text"):
        raise ApiError(400, 'response_format: only {"type": "text"} is supported', "response_format")
    if model.chat_template is None:
        raise ApiError(
            400, f"model {model.name} has no chat template (chat_template.jinja or tokenizer_config.json); use /v1/completions", "messages"
        )
    messages = _messages(body.get("messages"))
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ApiError(400, "chat_template_kwargs: expected an object", "chat_template_kwargs")
    try:
        text = model.chat_template.render(messages, add_generation_prompt=True, **kwargs)
    except ChatTemplateError as e:
        raise ApiError(400, str(e), "messages") from None
    except TypeError as e:  # a keyword the renderer itself takes (messages=..., tools=...)
        raise ApiError(400, f"chat_template_kwargs: {e}", "chat_template_kwargs") from None
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    _check_length(ids, model, "messages")
    default = model.max_length - len(ids)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    plan = _plan(body, model, ids, _integer(body, name, 1, None, default))
    history = _history_length(messages, kwargs, ids, model)
    if history:
        plan.inputs["snapshot_at"] = np.int32(history)
    return plan


def _history_length(messages: list, kwargs: Mapping, ids: list[int], model: ModelInfo) -> int | None:
    """How many of the prompt's tokens are the conversation so far without the generation prompt, when
    they begin it: the prefix cache keeps the state there, and the next turn (these messages, the reply
    and a new message) begins with them when the template renders earlier turns unchanged. Nemotron's
    templates render the generation prompt with an empty think block that the next turn's assistant
    message does not repeat, so the whole prompt is not a prefix of the next one; this is."""
    try:
        text = model.chat_template.render(messages, add_generation_prompt=False, **kwargs)
    except (ChatTemplateError, TypeError):
        return None
    history = model.tokenizer.encode(text, add_special_tokens=False)
    return len(history) if 0 < len(history) < len(ids) and ids[: len(history)] == history else None


def _common_checks(body: Mapping, model: ModelInfo) -> None:
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    if body.get("model") != model.name:
        raise ApiError(
            404, f"The model '{body.get('model')}' does not exist; this server serves '{model.name}'", "model", code="model_not_found"
        )
    if body.get("n") not in (None, 1):
        raise ApiError(400, "n: only 1 choice per request is supported", "n")
    if body.get("logit_bias"):
        raise ApiError(400, "logit_bias is not supported", "logit_bias")


def _plan(body: Mapping, model: ModelInfo, ids: list[int], max_tokens: int) -> Plan:
    inputs: dict[str, object] = {}
    temperature = _number(body, "temperature", 0.0, 2.0, None)
    top_p = _number(body, "top_p", 0.0, 1.0, None)
    top_k = _integer(body, "top_k", -1, None, None)
    if top_p == 0.0:
        raise ApiError(400, "top_p: expected a number in (0, 1]", "top_p")
    if temperature is None:  # the checkpoint's default, as vLLM takes it
        temperature = 0.0 if model.greedy_default else (model.temperature_default or 1.0)
        top_p = top_p if top_p is not None else model.top_p_default
        top_k = top_k if top_k is not None else model.top_k_default
    if temperature > 0:  # greedy otherwise: the generate model's default without sampling fields
        inputs["temperature"] = np.float32(temperature)
        inputs["runtime_top_p"] = np.float32(top_p or 1.0)
        # top_k = the vocabulary keeps every token and tells the generate model to sample (at temperature 1
        # with no filter it would otherwise take the argmax)
        inputs["runtime_top_k"] = np.int32(top_k if top_k and top_k > 0 else model.vocab_size)
        seed = _integer(body, "seed", None, None, None)
        if seed is not None:
            inputs["random_seed"] = np.uint64(seed % 2**64)
    for name, lo, hi, off in (
        ("presence_penalty", -2.0, 2.0, 0.0),
        ("frequency_penalty", -2.0, 2.0, 0.0),
        ("repetition_penalty", None, None, 1.0),
    ):
        value = _number(body, name, lo, hi, off)
        if name == "repetition_penalty" and not value > 0:
            raise ApiError(400, f"repetition_penalty: {value}; expected a number > 0", name)
        if value != off:
            inputs[name] = np.float32(value)
    stop = _stop(body.get("stop"))
    if stop:
        inputs["stop_words"] = stop
    if _boolean(body, "ignore_eos", False):
        inputs["ignore_eos"] = np.bool_(True)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, Mapping)):
        raise ApiError(400, "stream_options: only with stream: true, as an object", "stream_options")
    include_usage = bool(options and _boolean(options, "include_usage", False, "stream_options.include_usage"))
    return Plan(ids, min(max_tokens, model.max_length - len(ids)), inputs, stream, include_usage)


def _prompt_ids(prompt, model: ModelInfo) -> list[int]:
    """A completions prompt: text, token ids, or a list of one of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt: empty; expected some text", "prompt")
        ids = model.tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
        bad = [t for t in ids if not 0 <= t < model.vocab_size]
        if bad:
            raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})", "prompt")
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "prompt: one prompt per request is supported (send several requests; they are batched on the server)", "prompt")
    else:
        raise ApiError(400, "prompt: expected a string or a list of token ids", "prompt")
    _check_length(ids, model, "prompt")
    return ids


def _check_length(ids: list[int], model: ModelInfo, param: str) -> None:
    if not ids:
        raise ApiError(400, f"{param}: no tokens; expected at least one", param)
    if len(ids) >= model.max_length:
        raise ApiError(
            400,
            f"{param}: {len(ids)} tokens; this model's maximum context length is {model.max_length} tokens, "
            "which leaves no room to generate",
            param,
            code="context_length_exceeded",
        )


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list of messages", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise ApiError(400, f"{where}: expected an object with 'role' and 'content'", where)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role: {role!r} is not one of {', '.join(ROLES)}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"{where}.content[{j}]: only text parts are supported", f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise ApiError(400, f"{where}.content: expected a string or a list of text parts", f"{where}.content")
        if content is None and role != "assistant":
            raise ApiError(400, f"{where}.content: missing", f"{where}.content")
        out.append({**message, "role": "system" if role == "developer" else role, "content": content})
    return out


def _stop(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop: expected a string or a list of strings", "stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop: {len(stop)} strings; at most {MAX_STOP_STRINGS}", "stop")
    return [s for s in stop if s]


def _value(body: Mapping, name: str, ok: Callable[[object], bool], what: str, default, param: str | None = None):
    value = body.get(name)
    if value is None:
        return default
    if not ok(value):
        raise ApiError(400, f"{param or name}: {value!r}; expected {what}", param or name)
    return value


def _number(body, name, lo, hi, default):
    value = _value(body, name, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", default)
    if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        raise ApiError(400, f"{name}: {value}; expected a number in [{lo}, {hi}]", name)
    return None if value is None else float(value)


def _integer(body, name, lo, hi, default):
    value = _value(body, name, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", default)
    if value is not None and lo is not None and value < lo:
        raise ApiError(400, f"{name}: {value}; expected an integer >= {lo}", name)
    return value


def _boolean(body, name, default, param=None):
    return _value(body, name, lambda v: isinstance(v, bool), "true or false", default, param)
