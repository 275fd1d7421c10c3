"""Chat templates (issue 23, step 2): the prompt our renderer makes is byte-identical to transformers'
`apply_chat_template` on the same tokenizer files, and its token ids equal `apply_chat_template(...,
tokenize=True)`; for a Nemotron-style template (system prompt, reasoning on/off by keyword and by
/think, /no_think), named templates with tools, HF helpers, and a template that raises. `Session.chat`
and `generate --chat` generate from those ids."""

from __future__ import annotations

import json
import shutil

import pytest
from chat_fixtures import CHAT_TOKENS, NEMOTRON_STYLE, TOOLS_TEMPLATE, export_chat_artifact, write_tokenizer_files
from click.testing import CliRunner
from transformers import PreTrainedTokenizerFast

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.chat_template import ChatTemplate, ChatTemplateError
from nemotron_deploy.runtime.session import Session

CONVERSATIONS = [
    ([{"role": "user", "content": "Write a haiku about GPUs"}], {}),
    ([{"role": "system", "content": "You are terse. /no_think"}, {"role": "user", "content": "Hi"}], {}),
    ([{"role": "system", "content": "/think"}, {"role": "user", "content": "Hi"}], {"enable_thinking": False}),
    ([{"role": "user", "content": "Hi"}], {"enable_thinking": False}),
    (
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
            {"role": "user", "content": 'ünïcode ✓ "quotes" <b>'},
        ],
        {},
    ),
    (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "reasoning": "greet"}],
        {"add_generation_prompt": False},
    ),
]


@pytest.fixture(scope="module")
def chat_artifact(tmp_path_factory):
    return export_chat_artifact(tmp_path_factory.mktemp("chat"))


def _hf(folder):
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_rendered_prompt_and_ids_equal_transformers(chat_artifact, case):
    messages, kwargs = CONVERSATIONS[case]
    kwargs = {"add_generation_prompt": True, **kwargs}
    hf = _hf(chat_artifact)
    want = hf.apply_chat_template(messages, tokenize=False, **kwargs)
    got = ChatTemplate.of(chat_artifact).render(messages, **kwargs)
    assert got == want
    want_ids = hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert Session(chat_artifact).chat_prompt(messages, **kwargs) == list(want_ids)
    assert any(t in want_ids for t in hf.convert_tokens_to_ids(CHAT_TOKENS))  # the template's own special tokens
    text = json.dumps(messages)  # reasoning off: /no_think, or the keyword unless /think overrides it
    no_think = "/no_think" in text or (kwargs.get("enable_thinking") is False and "/think" not in text)
    assert want.endswith("<think></think>") == (no_think and kwargs["add_generation_prompt"])


def test_named_templates_tools_helpers_and_the_template_file(chat_artifact, tmp_path):
    folder = tmp_path / "named"
    folder.mkdir()
    named = [{"name": "default", "template": NEMOTRON_STYLE}, {"name": "tool_use", "template": TOOLS_TEMPLATE}]
    write_tokenizer_files(folder, {"chat_template": named})
    messages = [{"role": "user", "content": "weather in Zürich? <now>"}]
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    ]
    hf, ours = _hf(folder), ChatTemplate.of(folder)
    for kw in ({}, {"tools": tools}):
        assert ours.render(messages, **kw) == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    assert "tools: [\n  {" in ours.render(messages, tools=tools) and "Zürich" in ours.render(
        messages, tools=tools
    )  # tojson: indent, no escaping
    # chat_template.jinja beside tokenizer_config.json wins, as in transformers
    (folder / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    assert ChatTemplate.of(folder).render(messages) == _hf(folder).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ChatTemplate.of(folder).render(messages).startswith("<s>[user]")


def test_a_template_that_raises_and_bad_messages_are_one_line_errors(chat_artifact):
    template = ChatTemplate.of(chat_artifact)
    with pytest.raises(ChatTemplateError, match="refused the conversation: Only system, user and assistant roles are supported, got tool"):
        template.render([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    for messages, field in (
        ([], "messages: empty"),
        ([{"content": "x"}], r"messages\[0\].role"),
        (["hello"], r"messages\[0\]: expected an object"),
        ("hi", "messages: expected a list"),
    ):
        with pytest.raises(ChatTemplateError, match=field):
            template.render(messages)


def test_chat_generates_from_the_rendered_ids(chat_artifact, tmp_path):
    session = Session(chat_artifact)
    messages = [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "Write a haiku about GPUs"}]
    ids = list(_hf(chat_artifact).apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
    want = session.generate([ids], 8, ignore_eos=True)
    got = session.chat(messages, 8, ignore_eos=True)
    assert got.new_token_ids == want.new_token_ids and got.text == want.text
    thinking = session.chat(messages[1:], 8, ignore_eos=True, chat_template_kwargs={"enable_thinking": False})
    assert thinking.new_token_ids == got.new_token_ids  # /no_think and enable_thinking=False render the same turn
    from nemotron_deploy.runtime.cli import main

    out = CliRunner().invoke(
        main,
        [
            "generate",
            str(chat_artifact),
            "--system",
            "/no_think",
            "--chat",
            "Write a haiku about GPUs",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["new_token_ids"] == want.new_token_ids
    out = CliRunner().invoke(
        main,
        [
            "generate",
            str(chat_artifact),
            "--chat",
            "Hi",
            "--chat-template-kwargs",
            '{"enable_thinking": false}',
            "--max-new-tokens",
            "3",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    # an artifact without a template refuses chat in one line; completions still work
    plain = tmp_path / "plain"
    shutil.copytree(chat_artifact, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(NemotronDeployError, match="no chat template"):
        Session(plain).chat(messages, 2)
    out = CliRunner().invoke(main, ["generate", str(plain), "--chat", "Hi", "--max-new-tokens", "2"])
    assert out.exit_code != 0 and "no chat template" in out.output and "Traceback" not in out.output
    assert Session(plain).generate(["Hi"], 2).new_token_ids
