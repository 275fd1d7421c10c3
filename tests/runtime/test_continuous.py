"""Continuous batching: sequences that join and leave a running batch get the tokens they get alone
(transformers' greedy tokens; the runtime's seeded sampling), in about max(lengths) decode steps."""

import numpy as np
import pytest
from hf_oracle import hf_greedy

from nemotron_deploy.runtime.backends.interface import Backend
from nemotron_deploy.runtime.continuous import ContinuousBatcher, Request
from nemotron_deploy.runtime.sampling import Sampling
from nemotron_deploy.runtime.session import Session

PROMPTS = [[5, 17, 3, 99, 42, 8], [7, 70], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [64], [30, 31, 32]]
LENGTHS = [9, 4, 12, 7, 5]


class Collect:
    """A request's tokens and finish reason, as the batcher reports them."""

    def __init__(self):
        self.tokens, self.reason, self.errors = [], None, []

    def request(self, prompt, max_new_tokens, **kw) -> Request:
        return Request(prompt, max_new_tokens, on_token=self.on_token, on_error=self.errors.append, **kw)

    def on_token(self, token, reason):
        assert self.reason is None, "token after the final one"
        self.tokens.append(token)
        self.reason = reason


def _drain(batcher, limit=1000):
    for _ in range(limit):
        if not batcher.busy:
            return
        batcher.step()
    raise AssertionError("batcher did not finish")


@pytest.fixture(scope="module")
def session(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups")  # mamba, MoE and attention layers: K/V rows are re-padded
    return ref, Session(artifact)


def _batcher(session, max_batch=8):
    return ContinuousBatcher(session.backend, session.manifest.states, max_batch=max_batch, max_length=session.max_length)


@pytest.fixture(scope="module")
def in_place_session(artifacts):
    """The same checkpoint exported with --kv-in-place: rows joining and leaving copy the K/V buffers."""
    ref, _, artifact = artifacts("hybrid_moe_groups", kv_in_place=True)
    return ref, Session(artifact)


@pytest.mark.parametrize("max_batch,kv", [(2, "concat"), (8, "concat"), (2, "in_place")])
def test_staggered_joins_equal_transformers_greedy(session, in_place_session, max_batch, kv):
    ref, sess = session if kv == "concat" else in_place_session
    batcher = _batcher(sess, max_batch)
    runs = [Collect() for _ in PROMPTS]
    for i, (prompt, n) in enumerate(zip(PROMPTS, LENGTHS)):
        batcher.submit(runs[i].request(prompt, n))
        if i % 2:  # some join while others are mid-sequence, with shorter and longer K/V than the batch's
            batcher.step()
            batcher.step()
    _drain(batcher)
    for run, prompt, n in zip(runs, PROMPTS, LENGTHS):
        assert run.tokens == hf_greedy(ref, prompt, n) and run.reason == "length"
    assert batcher.counters.sequences == len(PROMPTS) and batcher.counters.tokens == sum(LENGTHS)


def test_one_decode_step_serves_every_sequence(session):
    _, sess = session
    batcher = _batcher(sess)
    runs = [Collect() for _ in PROMPTS]
    for run, prompt, n in zip(runs, PROMPTS, LENGTHS):
        batcher.submit(run.request(prompt, n))
    _drain(batcher)
    # the first token of each comes from the prefill; then one step per token of the longest
    assert batcher.counters.decode_steps == max(LENGTHS) - 1 and batcher.counters.prefill_calls == 1
    assert batcher._state is None and batcher._mask is None  # every slot freed


@pytest.mark.parametrize("limit", ["chunk size", "backend"])
def test_chunked_admission_interleaves_with_decoding(session, limit, monkeypatch):
    """A long prompt joins in chunks of 3 tokens, one per step, while the running sequence keeps decoding.
    3: the batcher's chunk size, or the most the backend takes in one call (as the decode loop's prefill)."""
    ref, sess = session
    if limit == "backend":
        monkeypatch.setattr(sess.backend, "max_prefill_tokens", 3, raising=False)
    chunk = 3 if limit == "chunk size" else None
    batcher = ContinuousBatcher(sess.backend, sess.manifest.states, max_batch=4, max_length=sess.max_length, prefill_chunk_size=chunk)
    running, joining = Collect(), Collect()
    batcher.submit(running.request(PROMPTS[1], 10))  # 2 tokens: one chunk
    batcher.step()
    batcher.submit(joining.request(PROMPTS[2], 5))  # 11 tokens: 4 chunks
    for _ in range(3):
        before = len(running.tokens)
        batcher.step()
        assert len(running.tokens) == before + 1 and joining.tokens == []
    batcher.step()  # the last chunk: its first token, then it decodes with the others in the same step
    assert len(joining.tokens) == 2
    _drain(batcher)
    assert running.tokens == hf_greedy(ref, PROMPTS[1], 10) and joining.tokens == hf_greedy(ref, PROMPTS[2], 5)
    assert batcher.counters.prefill_calls == 1 + 4


def test_seeded_sampling_and_eos_match_generate(session):
    _, sess = session
    sampling = Sampling(temperature=0.7, top_k=20, top_p=0.9, seed=1234)
    expected = sess.generate([PROMPTS[2]], max_new_tokens=10, sampling=sampling, ignore_eos=True).new_token_ids[0]
    eos = expected[4]  # a stop token this sequence meets at its 5th token
    batcher = _batcher(sess)
    busy, sampled, stopped = Collect(), Collect(), Collect()
    batcher.submit(busy.request(PROMPTS[0], 8))
    batcher.step()
    batcher.submit(sampled.request(PROMPTS[2], 10, sampling=sampling))
    batcher.submit(stopped.request(PROMPTS[2], 10, sampling=sampling, stop_token_ids=frozenset([eos])))
    _drain(batcher)
    assert sampled.tokens == expected
    assert stopped.tokens == expected[: expected.index(eos) + 1] and stopped.reason == "eos"


def test_model_length_limit(session):
    _, sess = session
    batcher = ContinuousBatcher(sess.backend, sess.manifest.states, max_batch=4, max_length=len(PROMPTS[0]) + 3)
    run = Collect()
    batcher.submit(run.request(PROMPTS[0], 50))
    _drain(batcher)
    assert len(run.tokens) == 3 and run.reason == "length"


def test_cancelled_sequences_leave_and_others_continue(session):
    ref, sess = session
    batcher = _batcher(sess)
    gone = {"flag": False}
    kept, dropped, never = Collect(), Collect(), Collect()
    batcher.submit(kept.request(PROMPTS[0], 9))
    batcher.submit(dropped.request(PROMPTS[2], 12, cancelled=lambda: gone["flag"]))
    batcher.submit(never.request(PROMPTS[1], 5, cancelled=lambda: True))  # cancelled while waiting
    batcher.step()
    batcher.step()
    gone["flag"] = True
    _drain(batcher)
    assert kept.tokens == hf_greedy(ref, PROMPTS[0], 9)
    assert 0 < len(dropped.tokens) < 12 and dropped.reason is None and dropped.errors == ["cancelled"]
    assert never.tokens == [] and never.errors == ["cancelled"]
    assert batcher.counters.sequences == 3 and batcher.active == 0


def test_backend_failure_ends_its_sequences_not_the_batcher(session):
    ref, sess = session

    class Failing(Backend):
        """Fails the first decode step, then behaves."""

        def __init__(self, backend):
            self.backend, self.failed = backend, False

        def initial_state(self, batch):
            return self.backend.initial_state(batch)

        def step(self, graph, ids, mask, state):
            if graph == "decode" and not self.failed:
                self.failed = True
                raise RuntimeError("device lost")
            return self.backend.step(graph, ids, mask, state)

    batcher = ContinuousBatcher(Failing(sess.backend), sess.manifest.states, max_batch=4, max_length=sess.max_length)
    first, later = Collect(), Collect()
    batcher.submit(first.request(PROMPTS[0], 5))
    _drain(batcher)
    assert first.errors == ["decode step failed: device lost"] and len(first.tokens) == 1
    batcher.submit(later.request(PROMPTS[1], 4))
    _drain(batcher)
    assert later.tokens == hf_greedy(ref, PROMPTS[1], 4) and not later.errors


def test_a_failing_callback_ends_the_batch_not_the_thread(session):
    import threading

    ref, sess = session
    batcher = _batcher(sess)
    broken, bystander, later = Collect(), Collect(), Collect()

    def explode(token, reason):
        raise ValueError("client bug")

    batcher.submit(Request(PROMPTS[0], 5, on_token=explode, on_error=broken.errors.append))
    batcher.submit(bystander.request(PROMPTS[1], 5))
    stop = threading.Event()
    thread = threading.Thread(target=batcher.run, args=(stop,))
    thread.start()
    try:
        for _ in range(200):
            if bystander.errors:
                break
            threading.Event().wait(0.05)
        assert broken.errors == bystander.errors == ["internal error: ValueError: client bug"]
        batcher.submit(later.request(PROMPTS[1], 4))
        for _ in range(200):
            if later.reason:
                break
            threading.Event().wait(0.05)
        assert later.tokens == hf_greedy(ref, PROMPTS[1], 4)
    finally:
        stop.set()
        batcher.wake()
        thread.join(10)
    assert not thread.is_alive()


def test_text_stream_pieces_add_up_to_the_decoded_text(tmp_path):
    from nemotron_deploy.exporter.random_checkpoint import write_demo_tokenizer
    from nemotron_deploy.runtime.tokenizer import TextStream, Tokenizer

    write_demo_tokenizer(tmp_path / "tokenizer.json", 128)
    tokenizer = Tokenizer(tmp_path / "tokenizer.json")
    ids = tokenizer.encode("The runtime loops engine calls to decode, one token per step.") + list(np.arange(4, 40))
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert sum(1 for p in pieces if p) > len(ids) // 2  # streamed, not held to the end
