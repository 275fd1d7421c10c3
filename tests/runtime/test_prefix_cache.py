"""The prefix cache of the continuous batcher: a prompt that begins with a prefix the batcher prefilled
before is prefilled only from there, and every sequence gets the tokens it gets without the cache
(the uncached batcher as the oracle, transformers' greedy tokens where greedy), for prompts sharing
none, part or all of a cached prefix, mixed in one batch, with pieces that do and do not align with
the cached positions; a small budget evicts and never returns a wrong state."""

import numpy as np
import pytest
from hf_oracle import hf_greedy, random_prompt

from nemotron_deploy.runtime import prefix_cache
from nemotron_deploy.runtime.continuous import ContinuousBatcher, Request
from nemotron_deploy.runtime.prefix_cache import PrefixCache
from nemotron_deploy.runtime.sampling import Sampling
from nemotron_deploy.runtime.session import Session
from nemotron_deploy.runtime.snapshot import StateSnapshot

SYSTEM = random_prompt(11, seed=21)
TURN_TEXT = [random_prompt(6, seed=30 + i) for i in range(3)]


@pytest.fixture(scope="module")
def session(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups")  # mamba, MoE and attention: every state kind
    return ref, Session(artifact)


def _batcher(sess, budget_mb=64, chunk=None, max_batch=8):
    cache = PrefixCache(int(budget_mb * (1 << 20))) if budget_mb is not None else None
    return ContinuousBatcher(
        sess.backend,
        sess.manifest.states,
        max_batch=max_batch,
        max_length=sess.max_length,
        prefill_chunk_size=chunk,
        prefix_cache=cache,
        model=sess.model_id,
    )


def _run(batcher, prompts, n, sampling=Sampling(), check=None):
    """Submit every prompt, step until done; returns each one's tokens."""
    out = [[] for _ in prompts]
    errors = []
    for i, prompt in enumerate(prompts):
        batcher.submit(Request(prompt, n, sampling, on_token=lambda t, r, i=i: out[i].append(t), on_error=errors.append))
    for _ in range(1000):
        if not batcher.busy:
            break
        batcher.step()
        if check:
            check(batcher)
    assert not errors and not batcher.busy
    return out


@pytest.mark.parametrize("chunk", [None, 4])  # 4: pieces that do not align with the turns' lengths
def test_conversation_turns_prefill_only_their_new_tokens(session, chunk):
    ref, sess = session
    batcher = _batcher(sess, chunk=chunk)
    history, reused = list(SYSTEM), 0
    for turn, text in enumerate(TURN_TEXT):
        prompt = history + text
        before = batcher.counters.prefill_tokens
        (tokens,) = _run(batcher, [prompt], 4)
        assert tokens == hf_greedy(ref, prompt, 4)
        computed = batcher.counters.prefill_tokens - before
        assert computed == (len(prompt) if turn == 0 else len(text) + 4)  # the new text and the last reply
        reused += len(prompt) if turn < len(TURN_TEXT) - 1 else 0  # the next turn starts from this prompt's end
        history = prompt + tokens
    c = batcher.counters
    assert (c.prefix_cache_hits, c.prefix_cache_misses, c.prefix_tokens_reused) == (len(TURN_TEXT) - 1, 1, reused)


@pytest.mark.parametrize("chunk", [None, 3])
def test_none_part_and_all_of_a_prefix_in_one_batch(session, chunk):
    ref, sess = session
    batcher = _batcher(sess, chunk=chunk)
    cached = SYSTEM + TURN_TEXT[0]
    _run(batcher, [cached], 1)
    prompts = [cached + TURN_TEXT[1], random_prompt(9, seed=40), cached, SYSTEM[:5] + TURN_TEXT[2], cached[:-1]]
    greedy = _run(batcher, prompts, 5)
    assert greedy == [hf_greedy(ref, p, 5) for p in prompts]
    # whole prompts only: `cached` + more and `cached` itself; with pieces of 3 also the first 5 of it (from 3)
    # and all but its last token (from 12: a rest of one token would run as a decode step)
    assert batcher.counters.prefix_cache_hits == (2 if chunk is None else 4)

    sampling = Sampling(temperature=0.9, top_k=40, seed=7)
    assert _run(_batcher(sess, chunk=chunk), prompts, 6, sampling) == _run(
        _batcher(sess, budget_mb=None, chunk=chunk), prompts, 6, sampling
    )


def test_a_requested_position_is_snapshotted_and_continued_from(session):
    """`snapshot_at` (a chat's earlier turns' length) ends a prefill piece there, so the next prompt that
    begins with those tokens but not with the whole earlier prompt starts there."""
    ref, sess = session
    batcher = _batcher(sess)
    history, generation_prompt = SYSTEM + TURN_TEXT[0], [7, 8, 9]
    out = []
    batcher.submit(Request(history + generation_prompt, 3, on_token=lambda t, r: out.append(t), snapshot_at=(len(history),)))
    _run(batcher, [], 1)
    assert out == hf_greedy(ref, history + generation_prompt, 3)
    assert sorted(len(s.tokens) for s in batcher.prefix_cache._entries.values()) == [len(history), len(history) + 3]
    following = history + TURN_TEXT[1] + [7, 8, 9]  # the earlier turns, not the earlier generation prompt
    assert _run(batcher, [following], 4) == [hf_greedy(ref, following, 4)]
    assert batcher.counters.prefix_tokens_reused == len(history)


def test_a_small_budget_evicts_and_stays_exact(session):
    ref, sess = session
    probe = _batcher(sess)
    _run(probe, [SYSTEM], 1)
    one = max(s.nbytes for s in probe.prefix_cache._entries.values())
    budget = 1.5 * one / (1 << 20)  # room for one snapshot of that length, not two
    batcher = _batcher(sess, budget_mb=budget, chunk=5)
    held = []
    prompts = [SYSTEM + t for t in TURN_TEXT] + [SYSTEM, SYSTEM + TURN_TEXT[0]]
    for prompt in prompts:
        assert _run(batcher, [prompt], 3, check=lambda b: held.append(b.prefix_cache_bytes)) == [hf_greedy(ref, prompt, 3)]
    assert max(held) <= batcher.prefix_cache.budget and len(batcher.prefix_cache) >= 1
    assert batcher.counters.prefix_cache_hits >= 1


def _snap(tokens, nbytes=100):
    return StateSnapshot("m", tuple(tokens), {"s": np.zeros(nbytes - 8 * len(tokens) - 4, np.uint8)}, np.zeros(1, np.float32))


def test_cache_is_least_recently_used_within_its_budget(monkeypatch):
    cache = PrefixCache(250)
    a, b, c = _snap([1, 2]), _snap([1, 2, 3]), _snap([7])
    cache.put(a)
    cache.put(b)
    assert cache.longest([1, 2, 3, 4]) is b and cache.longest([1, 2, 9]) is a and cache.longest([5]) is None
    assert cache.longest([1, 2, 3], usable=lambda n: n != 3) is a  # the caller's rule on lengths
    cache.put(c)  # over 250 bytes: the least recently used (b) goes
    assert cache.bytes == 200 and cache.longest([1, 2, 3]) is a and cache.longest([7]) is c
    cache.put(_snap([9], nbytes=300))  # larger than the whole budget: not kept, nothing evicted
    assert len(cache) == 2
    monkeypatch.setattr(prefix_cache, "prefix_key", lambda tokens: b"same")  # a hash collision
    assert PrefixCache(1000).longest([1]) is None
    colliding = PrefixCache(1000)
    colliding.put(_snap([1, 2]))
    assert colliding.longest([1, 3]) is None  # same key, other tokens: a miss


def test_default_budget_fits_the_machine():
    mb = prefix_cache.default_budget_mb()
    assert 0 < mb <= prefix_cache.DEFAULT_MAX_MB
