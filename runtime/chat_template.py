"""The checkpoint's chat template: a conversation -> the prompt text the model was trained on.

Rendered as transformers' `apply_chat_template` renders it, so the prompt is byte-identical: the
template from `chat_template.jinja`, else `chat_template` in `tokenizer_config.json` (a string, or a
list of named templates: "default", or "tool_use" when tools are given); jinja2's immutable sandbox
(templates are code from the hub) with `trim_blocks` / `lstrip_blocks` and loop controls; the helpers
Hugging Face templates call (`raise_exception`, a `tojson` that does not escape HTML, `strftime_now`);
the tokenizer's named special tokens (`bos_token`, `eos_token`, ...) as variables; `messages`, `tools`,
`documents`, `add_generation_prompt` and any extra keyword the template reads (`enable_thinking` and
other `chat_template_kwargs`). The prompt's token ids are its text tokenized without special tokens:
the template writes them itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError

TEMPLATE_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "chat_template.jinja", "tokenizer_config.json", "special_tokens_map.json"
# transformers' named special tokens (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# a message's reasoning goes by several names; templates read `reasoning_content` (or gpt-oss's `thinking`)
_REASONING = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(NemotronDeployError):
    """A conversation the template cannot render (a bad message, or the template raised)."""


class ChatTemplate:
    def __init__(self, source: str | Mapping[str, str], special_tokens: Mapping[str, str], origin: Path):
        """source: the template, or named templates; special_tokens: e.g. {"bos_token": "<s>"}."""
        self.sources = dict(source) if isinstance(source, Mapping) else {"default": source}
        self.special_tokens = dict(special_tokens)
        self.origin = origin
        self._compiled = {}

    @classmethod
    def of(cls, folder: Path) -> ChatTemplate | None:
        """The template an artifact (or checkpoint) folder carries, or None if it has none."""
        config = _read_json(folder / TOKENIZER_CONFIG)
        specials = {**_special_tokens(_read_json(folder / SPECIAL_TOKENS_MAP)), **_special_tokens(config)}
        if (folder / TEMPLATE_FILE).is_file():
            return cls((folder / TEMPLATE_FILE).read_text(encoding="utf-8"), specials, folder / TEMPLATE_FILE)
        source = config.get("chat_template")
        if isinstance(source, list):  # [{"name": ..., "template": ...}, ...]
            try:
                source = {item["name"]: item["template"] for item in source}
            except (TypeError, KeyError):
                raise NemotronDeployError(
                    f"{folder / TOKENIZER_CONFIG}: chat_template: expected a string or a list of {{name, template}}"
                ) from None
        if source is None:
            return None
        if not isinstance(source, (str, dict)):
            raise NemotronDeployError(f"{folder / TOKENIZER_CONFIG}: chat_template: expected a string or a list of {{name, template}}")
        return cls(source, specials, folder / TOKENIZER_CONFIG)

    def render(
        self,
        messages: Sequence[Mapping],
        add_generation_prompt: bool = True,
        tools: list | None = None,
        documents: list | None = None,
        **kwargs,
    ) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]); kwargs: what else the
        template reads (e.g. enable_thinking). Raises ChatTemplateError naming the message or the template."""
        chat = [_aliased(_plain(m)) for m in _checked(messages)]
        template = self._template("tool_use" if tools and "tool_use" in self.sources else None)
        import jinja2

        try:
            return template.render(
                messages=chat,
                tools=_plain(tools),
                documents=_plain(documents),
                add_generation_prompt=add_generation_prompt,
                **{**self.special_tokens, **_plain(kwargs)},
            )
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{self.origin}: the chat template refused the conversation: {e}") from None

    def _template(self, name: str | None):
        if name is None:
            if len(self.sources) > 1 and "default" not in self.sources:
                raise ChatTemplateError(f"{self.origin}: several chat templates ({', '.join(self.sources)}) and none named 'default'")
            name = "default" if "default" in self.sources else next(iter(self.sources))
        if name not in self._compiled:
            self._compiled[name] = _compile(self.sources[name], self.origin)
        return self._compiled[name]


def _compile(source: str, origin: Path):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise NemotronDeployError("chat templates need jinja2: pip install 'nemotron-deploy[onnxruntime]'") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise NemotronDeployError(f"{origin}: the chat template is not valid jinja (line {e.lineno}: {e.message})") from None


def _checked(messages) -> list:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages: expected a list of {role, content} objects")
    if not messages:
        raise ChatTemplateError("messages: empty; expected at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}]: expected an object with 'role' and 'content', got {type(message).__name__}")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise ChatTemplateError(f"messages[{i}].role: expected a non-empty string")
    return list(messages)


def _aliased(message: dict) -> dict:
    """As transformers does: a message's reasoning under every name templates read."""
    reasoning = next((message[k] for k in _REASONING if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value):
    """Only JSON-like data reaches the sandboxed template (objects with methods could escape it)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value) if isinstance(value, tuple) else [_plain(v) for v in value]
    for kind in (bool, str, int, float):  # subclasses (enums, numpy scalars) lose their methods
        if isinstance(value, kind):
            return kind(value)
    if callable(getattr(value, "item", None)) and getattr(value, "shape", None) == ():  # a numpy scalar
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _special_tokens(config: Mapping) -> dict[str, str]:
    """The named special tokens of a tokenizer config (strings, or AddedToken objects with "content")."""
    out = {}
    for name in SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NemotronDeployError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise NemotronDeployError(f"{path}: expected a JSON object")
    return data
