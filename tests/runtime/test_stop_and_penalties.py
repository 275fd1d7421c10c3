"""Stop strings and penalties (issue 23, step 3): penalties against transformers' logits processors (on
recorded logits, and in transformers' own generate on the same checkpoint), the OpenAI API's presence and
frequency penalties against a reference written from its definition, stop strings cut exactly where
they start in the text, also when they span tokens, in `Session`, the continuous batcher and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hf_oracle import random_prompt
from transformers import LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.continuous import ContinuousBatcher, Request
from nemotron_deploy.runtime.sampling import Sampler, Sampling, penalize
from nemotron_deploy.runtime.session import Session
from nemotron_deploy.runtime.stop_text import StopText


class OpenAIPenalties(LogitsProcessor):
    """The OpenAI API's definition, as its docs write it: mu[j] -= c[j] * frequency + (c[j] > 0) * presence,
    c[j] the times token j was generated (the prompt not counted)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = torch.zeros_like(scores)
        generated = input_ids[:, self.prompt_len :]
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


def _recorded(seed: int, vocab: int = 50):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((1, vocab)) * 3).astype(np.float32)
    prompt = rng.integers(0, vocab, 12).tolist()
    output = rng.integers(0, vocab, 9).tolist() + [prompt[0]] * 3  # repeats, and a token in both
    return logits, prompt, output


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_is_transformers_processor(penalty):
    for seed in range(5):
        logits, prompt, output = _recorded(seed)
        want = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + output]), torch.from_numpy(logits.copy()))
        got = penalize(logits, Sampling(repetition_penalty=penalty), [prompt], [output])
        np.testing.assert_array_equal(got, want.numpy())
        assert not np.array_equal(got, logits)


@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.8), (1.5, -0.4), (-2.0, 2.0)])
def test_presence_and_frequency_penalties_are_the_openai_definition(presence, frequency):
    for seed in range(5):
        logits, prompt, output = _recorded(seed)
        ref = OpenAIPenalties(len(prompt), presence, frequency)(torch.tensor([prompt + output]), torch.from_numpy(logits.copy()))
        got = penalize(logits, Sampling(presence_penalty=presence, frequency_penalty=frequency), [prompt], [output])
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)
        untouched = sorted(set(range(logits.shape[1])) - set(output))
        np.testing.assert_array_equal(got[0, untouched], logits[0, untouched])  # the prompt's tokens are not counted


@pytest.mark.parametrize("kw", [{"repetition_penalty": 0}, {"presence_penalty": 2.5}, {"frequency_penalty": -3}])
def test_penalties_out_of_range_are_refused(kw):
    with pytest.raises(NemotronDeployError, match=next(iter(kw))):
        Sampling(**kw)
    with pytest.raises(ValueError, match="prompt and output"):
        Sampler(Sampling(repetition_penalty=1.2))(np.zeros((1, 4), np.float32))


@pytest.fixture(scope="module")
def hf_pair(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups")
    return ref, Session(artifact)


@torch.no_grad()
def _hf_tokens(model, prompt, n, **kw):
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        **kw,
    )
    return out[0, len(prompt) :].tolist()


def test_penalized_greedy_tokens_equal_transformers_generate(hf_pair):
    """Penalties change the tokens exactly as transformers' processors predict, in its own generate."""
    ref, session = hf_pair
    prompt = random_prompt(9, 7)
    plain = session.generate([prompt], 24, ignore_eos=True).new_token_ids[0]
    rep = session.generate([prompt], 24, Sampling(repetition_penalty=1.8), ignore_eos=True).new_token_ids[0]
    assert rep == _hf_tokens(ref, prompt, 24, repetition_penalty=1.8)
    openai = Sampling(presence_penalty=1.5, frequency_penalty=0.7)
    pf = session.generate([prompt], 24, openai, ignore_eos=True).new_token_ids[0]
    assert pf == _hf_tokens(ref, prompt, 24, logits_processor=LogitsProcessorList([OpenAIPenalties(len(prompt), 1.5, 0.7)]))
    assert plain != rep and plain != pf, "the penalties changed nothing: the test proves nothing"
    # the continuous batcher (Triton's generate model) applies the same penalties per sequence
    got = []
    batcher = ContinuousBatcher(session.backend, session.manifest.states, max_batch=4, max_length=session.max_length)
    batcher.submit(Request(prompt, 24, Sampling(repetition_penalty=1.8), on_token=lambda t, r: got.append(t)))
    batcher.submit(Request(random_prompt(5, 8), 10))
    while batcher.busy:
        batcher.step()
    assert got == rep


def test_stop_text_cuts_where_the_stop_string_starts(tmp_path):
    from nemotron_deploy.exporter.random_checkpoint import write_demo_tokenizer
    from nemotron_deploy.runtime.tokenizer import Tokenizer

    write_demo_tokenizer(tmp_path / "tokenizer.json", 128)
    tokenizer = Tokenizer(tmp_path / "tokenizer.json")
    ids = tokenizer.encode("The runtime loops calls to decode, one token per step. Observation: done")
    whole = tokenizer.decode(ids)  # the demo tokenizer's small vocabulary has no "O": "... step. bservation: done"
    for stop in ("bservation:", "calls to", "p. b", "e"):  # within a token, across several, the first character
        assert stop in whole
        text = StopText(tokenizer, ["never there", stop])
        pieces = []
        for used, token in enumerate(ids, 1):
            pieces.append(text.push(token))
            if text.stopped:
                break
        pieces.append(text.flush())
        assert text.stopped and "".join(pieces) == text.text == whole[: whole.index(stop)], stop
        assert stop in tokenizer.decode(ids[:used]) and stop not in tokenizer.decode(ids[: used - 1]), "not stopped at the completing token"
    text = StopText(tokenizer, ["bserv", "loops"])  # the earliest of several
    for token in ids:
        text.push(token)
    assert text.stopped and text.text == whole[: whole.index("loops")]
    text = StopText(tokenizer, ["step. bservation: done and more"])  # a prefix held back, then released
    pieces = [text.push(t) for t in ids] + [text.flush()]
    assert not text.stopped and "".join(pieces) == whole
    assert pieces[-1].startswith("step"), "the held-back prefix came out only at the end"


@pytest.fixture(scope="module")
def text_artifact(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("tok") / "ckpt", config=TINY_CONFIG)
    return export_artifact(ckpt, tmp_path_factory.mktemp("tok-onnx") / "onnx", progress=False)


def test_generate_stops_at_a_string_spanning_tokens(text_artifact):
    session = Session(text_artifact)
    prompt = "The exporter traces the model"
    full = session.generate([prompt], 24, ignore_eos=True)
    tokens, text = full.new_token_ids[0], full.text[0]
    pieces = [session.decode(tokens[:i]) for i in range(len(tokens) + 1)]
    # a stop string that begins inside one token's text and ends inside a later one's
    cut = next(i for i in range(2, len(tokens)) if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) > len(pieces[i]))
    start = len(pieces[cut]) - 1
    stop = text[start : len(pieces[cut]) + 1]
    want_text = text[: text.index(stop)]
    streamed = []
    got = session.generate([prompt], 24, ignore_eos=True, stop=["zzz-not-there", stop], on_text=lambda row, piece: streamed.append(piece))
    assert got.finish_reasons == ["stop"] and got.text == [want_text]
    used = len(got.new_token_ids[0])
    assert got.new_token_ids[0] == tokens[:used] and stop in pieces[used] and stop not in pieces[used - 1]
    assert "".join(streamed) == want_text
    out = CliRunner().invoke(
        _cli(), ["generate", str(text_artifact), "--prompt", prompt, "--max-new-tokens", "24", "--ignore-eos", "--stop", stop, "--json"]
    )
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output.strip().splitlines()[-1])
    assert printed["text"] == [want_text] and printed["finish_reasons"] == ["stop"]
    streamed_cli = CliRunner().invoke(
        _cli(), ["generate", str(text_artifact), "--prompt", prompt, "--max-new-tokens", "24", "--ignore-eos", "--stop", stop, "--stream"]
    )
    assert streamed_cli.exit_code == 0 and streamed_cli.output == want_text + "\n"
    # the continuous batcher ends the sequence there too, and reports "stop"
    seen = []
    batcher = ContinuousBatcher(session.backend, session.manifest.states, max_batch=2, max_length=session.max_length)
    request = Request(session.encode(prompt), 24, text=StopText(session.tokenizer, [stop]), on_token=lambda t, r: seen.append((t, r)))
    batcher.submit(request)
    while batcher.busy:
        batcher.step()
    assert [t for t, _ in seen] == tokens[:used] and seen[-1][1] == "stop" and request.text.text == want_text


def test_penalties_on_the_command_line(text_artifact):
    args = ["generate", str(text_artifact), "--prompt-ids", "5,6,7", "--max-new-tokens", "12", "--ignore-eos", "--json"]
    plain = json.loads(CliRunner().invoke(_cli(), args).output.strip().splitlines()[-1])["new_token_ids"]
    session = Session(text_artifact)
    for flag, field, value in (("--repetition-penalty", "repetition_penalty", 3.0), ("--frequency-penalty", "frequency_penalty", 2.0)):
        out = CliRunner().invoke(_cli(), [*args, flag, str(value)])
        assert out.exit_code == 0, out.output
        want = session.generate([[5, 6, 7]], 12, Sampling(**{field: value}), ignore_eos=True).new_token_ids
        assert json.loads(out.output.strip().splitlines()[-1])["new_token_ids"] == want
    out = CliRunner().invoke(_cli(), [*args, "--presence-penalty", "3"])
    assert out.exit_code != 0 and "presence_penalty 3.0: expected a number in [-2, 2]" in out.output
    assert plain  # the artifact generates at all


def _cli():
    from nemotron_deploy.runtime.cli import main

    return main
