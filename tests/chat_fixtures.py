"""A chat-capable test artifact: the demo tokenizer with ChatML tokens and a Nemotron-style chat template
(shared by the chat template tests and the OpenAI endpoint tests)."""

from __future__ import annotations

import json
from pathlib import Path

from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_demo_tokenizer, write_random_checkpoint

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Nemotron-style (written for this test): ChatML turns, a system turn always, reasoning on by default,
# off by the enable_thinking keyword or /no_think in the system prompt (an empty think block opens the
# reply), the last assistant turn's reasoning kept, any other role refused.
NEMOTRON_STYLE = """{%- set thinking = enable_thinking if enable_thinking is defined else true -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}
{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}
{%- if '/no_think' in system -%}{%- set thinking = false -%}{%- set system = system.replace('/no_think', '') | trim -%}
{%- elif '/think' in system -%}{%- set thinking = true -%}{%- set system = system.replace('/think', '') | trim -%}{%- endif -%}
<|im_start|>system
{{ system }}<|im_end|>
{% for message in turns %}
{% if message['role'] == 'user' %}
<|im_start|>user
{{ message['content'] }}<|im_end|>
{% elif message['role'] == 'assistant' %}
<|im_start|>assistant
{% if loop.last and message.get('reasoning_content') %}<think>
{{ message['reasoning_content'] }}
</think>
{% endif %}
{{ message['content'] }}<|im_end|>
{% else %}
{{ raise_exception('Only system, user and assistant roles are supported, got ' ~ message['role']) }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if not thinking %}<think></think>{% endif %}
{% endif %}"""

TOOLS_TEMPLATE = """{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content | tojson }}
{% endfor %}{% if tools %}tools: {{ tools | tojson(indent=2) }}
{% endif %}{% if add_generation_prompt %}[assistant] {% endif %}year {{ strftime_now('%Y') }}"""


def write_tokenizer_files(folder, template_config):
    """The demo BPE tokenizer with the chat tokens added (ids below TINY_CONFIG's vocabulary), and a
    tokenizer_config.json with the named special tokens and `template_config`."""
    from tokenizers import Tokenizer

    write_demo_tokenizer(folder / "tokenizer.json", 120)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(CHAT_TOKENS)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", **template_config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def export_chat_artifact(root: Path) -> Path:
    """TINY_CONFIG's random checkpoint with those tokenizer files, exported for onnxruntime."""
    from nemotron_deploy.exporter.onnx_export import export_artifact

    ckpt = write_random_checkpoint(root / "ckpt", config=TINY_CONFIG)
    write_tokenizer_files(ckpt, {"chat_template": NEMOTRON_STYLE})
    return export_artifact(ckpt, root / "onnx", progress=False)
