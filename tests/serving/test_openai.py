"""The OpenAI-compatible endpoints of `nemotron-deploy serve` (a real tritonserver behind them), driven by
the official `openai` client. The oracle is the Python runtime (`Session`) on the same artifact: the
same rendered prompt, the same greedy or seeded tokens, the same penalties and stop strings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest
from chat_fixtures import export_chat_artifact
from http_wait import wait_for_http

from nemotron_deploy.runtime.sampling import Sampling
from nemotron_deploy.runtime.serving.triton.server import free_port
from nemotron_deploy.runtime.session import Session

MODEL = "nemotron-test"
HELLO = [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "Write a haiku about GPUs"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(openai client, Session on the same artifact, metrics url): `serve` started as a user starts it."""
    artifact = export_chat_artifact(tmp_path_factory.mktemp("openai"))
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "openai")}
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "w+")
    cmd = [
        sys.executable,
        "-m",
        "nemotron_deploy.runtime.cli",
        "serve",
        str(artifact),
        "--served-model-name",
        MODEL,
        "--threads",
        "1",
        *(x for name, port in ports.items() for x in (f"--{name}-port", str(port))),
    ]
    serve = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{ports['openai']}"
    try:
        assert wait_for_http(f"{base}/health", serve), _tail(log)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        yield client, Session(artifact), f"http://127.0.0.1:{ports['metrics']}/metrics"
    finally:
        serve.terminate()
        serve.wait(60)
        log.close()


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return "\n".join(log.read().splitlines()[-30:])


def _stream_text(stream) -> tuple[str, str | None, dict | None]:
    """(joined text, finish reason, usage) of a streamed chat or completion."""
    text, reason, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            text.append(piece or "")
            reason = choice.finish_reason or reason
    return "".join(text), reason, usage


def _reason(generation) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length"}[generation.finish_reasons[0]]


def test_models_and_health(served):
    client, _, _ = served
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_greedy_equals_the_runtime_streamed_and_not(served):
    client, session, _ = served
    want = session.chat(HELLO, 12)
    prompt = session.chat_prompt(HELLO)
    got = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=12)
    assert got.choices[0].message.content == want.text[0] and got.choices[0].finish_reason == _reason(want)
    assert got.usage.prompt_tokens == len(prompt) and got.usage.completion_tokens == len(want.new_token_ids[0])
    assert got.usage.total_tokens == len(prompt) + len(want.new_token_ids[0])
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_completion_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    text, reason, usage = _stream_text(stream)
    assert (text, reason) == (want.text[0], _reason(want)) and usage == got.usage.model_dump()
    # reasoning off by the template's keyword renders the same turn as /no_think
    kw = client.chat.completions.create(
        model=MODEL, messages=HELLO[1:], temperature=0, max_tokens=12, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert kw.choices[0].message.content == want.text[0]


def test_completions_of_text_and_token_ids(served):
    client, session, _ = served
    want = session.generate(["The runtime"], 10, ignore_eos=True)
    got = client.completions.create(model=MODEL, prompt="The runtime", temperature=0, max_tokens=10, extra_body={"ignore_eos": True})
    assert got.choices[0].text == want.text[0] and got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == len(session.encode("The runtime")) and got.usage.completion_tokens == 10
    ids = [5, 17, 42, 9, 3]
    by_ids = session.generate([ids], 10, ignore_eos=True)
    stream = client.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=10, stream=True, extra_body={"ignore_eos": True})
    assert _stream_text(stream)[:2] == (by_ids.text[0], "length")


def _metric(metrics_url: str, name: str) -> float:
    """The sum over instances of the generate model's metric `name` (e.g. tokens_total)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^nemotron_{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def test_conversation_turns_prefill_only_their_new_tokens(served):
    """Each turn re-sends the history (token ids, as a chat client's rendered turns): the server
    restores the state after the previous turn's prompt and prefills the rest; the tokens are the
    runtime's without any cache."""
    client, session, metrics = served
    names = ("prefix_cache_hits_total", "prefix_tokens_reused_total", "prefill_tokens_total")
    prompt, previous = [99, 98, 97, 96] + [5 + i % 50 for i in range(30)], None
    for turn in range(3):
        before = {n: _metric(metrics, n) for n in names}
        want = session.generate([prompt], 6, ignore_eos=True)
        got = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, extra_body={"ignore_eos": True})
        assert got.choices[0].text == want.text[0]
        if previous is None:  # a new conversation: all prefilled (waited for, or it lands in the next turn's counts)
            expected = {"prefix_cache_hits_total": 0, "prefix_tokens_reused_total": 0, "prefill_tokens_total": len(prompt)}
        else:
            expected = {
                "prefix_cache_hits_total": 1,
                "prefix_tokens_reused_total": len(previous),
                "prefill_tokens_total": len(prompt) - len(previous),
            }
        deadline = time.monotonic() + 5  # the counters reach /metrics when the batcher goes idle
        while (seen := {n: _metric(metrics, n) - before[n] for n in names}) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen == expected
        previous, prompt = prompt, prompt + want.new_token_ids[0] + [7 + turn, 8, 9, 10]
    assert _metric(metrics, "prefix_cache_bytes") > 0


def test_chat_turns_start_from_the_earlier_turns(served):
    """The template renders the generation prompt with an empty think block that the next turn does not
    repeat: the server keeps the state where the earlier turns end, and each turn starts there."""
    client, session, metrics = served
    names = ("prefix_cache_hits_total", "prefix_tokens_reused_total")
    messages = [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "Name three prime numbers"}]
    for turn, question in enumerate(["And three more?", "Which is the largest?", None]):
        before = {n: _metric(metrics, n) for n in names}
        want = session.chat(messages, 8, ignore_eos=True)
        got = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8, extra_body={"ignore_eos": True})
        assert got.choices[0].message.content == want.text[0]
        if turn:
            earlier = len(session.chat_prompt(messages[:-2], add_generation_prompt=False))
            expected = {"prefix_cache_hits_total": 1, "prefix_tokens_reused_total": earlier}
            deadline = time.monotonic() + 5
            while (seen := {n: _metric(metrics, n) - before[n] for n in names}) != expected and time.monotonic() < deadline:
                time.sleep(0.1)
            assert seen == expected
        messages = messages + [{"role": "assistant", "content": want.text[0]}, {"role": "user", "content": question}]


def test_stop_cuts_exactly_where_the_string_starts(served):
    client, session, _ = served
    full = session.chat(HELLO, 24, ignore_eos=True)
    tokens, text = full.new_token_ids[0], full.text[0]
    pieces = [session.decode(tokens[:i]) for i in range(len(tokens) + 1)]
    cut = next(i for i in range(2, len(tokens)) if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) > len(pieces[i]))
    stop = text[len(pieces[cut]) - 1 : len(pieces[cut]) + 1]  # begins in one token's text, ends in the next one's
    want = text[: text.index(stop)]
    extra = {"ignore_eos": True}
    got = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=24, stop=stop, extra_body=extra)
    assert got.choices[0].message.content == want and got.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=24, stop=["zz-never", stop], stream=True, extra_body=extra
    )
    assert _stream_text(stream)[:2] == (want, "stop")


def test_penalties_and_seeded_sampling_equal_the_runtime(served):
    client, session, _ = served
    ids = [11, 12, 13, 14, 15]
    penalties = dict(presence_penalty=1.2, frequency_penalty=0.6, repetition_penalty=1.5)
    want = session.generate([ids], 16, Sampling(**penalties), ignore_eos=True)
    got = client.completions.create(
        model=MODEL,
        prompt=ids,
        temperature=0,
        max_tokens=16,
        presence_penalty=1.2,
        frequency_penalty=0.6,
        extra_body={"repetition_penalty": 1.5, "ignore_eos": True},
    )
    assert got.choices[0].text == want.text[0] != session.generate([ids], 16, ignore_eos=True).text[0]
    sampled = session.generate([ids], 16, Sampling(temperature=0.8, top_p=0.9, seed=5), ignore_eos=True)
    runs = [
        client.completions.create(
            model=MODEL, prompt=ids, temperature=0.8, top_p=0.9, seed=seed, max_tokens=16, extra_body={"ignore_eos": True}
        )
        for seed in (5, 5, 6)
    ]
    assert runs[0].choices[0].text == runs[1].choices[0].text == sampled.text[0] != runs[2].choices[0].text


def test_concurrent_streams_each_get_their_own_answer(served):
    client, session, _ = served
    conversations = [
        [{"role": "user", "content": text}] for text in ("Hi", "The exporter traces the model", "decode one token", "MoE layers")
    ]
    want = [session.chat(m, 10 + 3 * i, ignore_eos=True).text[0] for i, m in enumerate(conversations)]
    got = [None] * len(conversations)
    barrier = threading.Barrier(len(conversations))

    def run(i):
        barrier.wait()
        stream = client.chat.completions.create(
            model=MODEL, messages=conversations[i], temperature=0, max_tokens=10 + 3 * i, stream=True, extra_body={"ignore_eos": True}
        )
        got[i] = _stream_text(stream)[:2]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(conversations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == [(text, "length") for text in want]


BAD = [
    (dict(model="no-such-model"), 404, "model"),
    (dict(messages=[]), 400, "messages"),
    (dict(n=2), 400, "n"),
    (dict(max_tokens=-3), 400, "max_tokens"),
    (dict(messages=[{"role": "user", "content": "x " * 1100}]), 400, "messages"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role"),
    (dict(logprobs=True), 400, "logprobs"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), 400, "tools"),
    (dict(temperature=3.0), 400, "temperature"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
]


def test_bad_requests_get_the_apis_errors_while_a_good_stream_completes(served):
    client, session, _ = served
    want = session.chat(HELLO, 40, ignore_eos=True).text[0]
    good = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=40, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(good))
    for change, status, param in BAD:
        request = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **change}
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(**request)
        error = caught.value.body.get("error", caught.value.body) if isinstance(caught.value.body, dict) else {}
        assert caught.value.status_code == status and error.get("param") == param, (change, caught.value.body)
        assert error.get("type") and error.get("message")
    text, reason, _ = _stream_text(good)
    assert (first.choices[0].delta.content or "") + text == want and reason == "length"
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=MODEL, prompt=[5, 999999], max_tokens=2)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(served):
    client, _, metrics = served
    before = _metric(metrics, "tokens_total")
    body = json.dumps({"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 900, "stream": True, "ignore_eos": True}).encode()
    request = urllib.request.Request(str(client.base_url).rstrip("/") + "/completions", body, {"Content-Type": "application/json"})
    response = urllib.request.urlopen(request, timeout=60)
    for _ in range(4):
        assert response.readline()
    response.close()  # the client goes away after a few tokens
    time.sleep(3)
    generated = _metric(metrics, "tokens_total") - before
    time.sleep(1)
    assert _metric(metrics, "tokens_total") - before == generated < 900, "the request kept generating after its client left"
