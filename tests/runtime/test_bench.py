"""`bench` times nothing while its memory sampler runs, and still reports the memory of the work it timed."""

from nemotron_deploy.runtime.artifact.manifest import read_manifest
from nemotron_deploy.runtime.backends import open_backend
from nemotron_deploy.runtime.bench import run_bench
from nemotron_deploy.runtime.memory import PeakMemory


def test_the_memory_sampler_is_stopped_before_anything_is_timed(artifacts):
    """The sampler's thread reads /proc every few milliseconds: on a 2-core machine it took a core from
    the step's threads (decode at 2 threads measured 10-20 % slower). Its peaks come from the same work
    run once before the timed runs, with the sampler on."""
    _, _, artifact = artifacts("hybrid_moe_groups")
    manifest = read_manifest(artifact)
    memory = PeakMemory(pss=True).start()
    backend = open_backend(manifest)
    sampled, step = [], backend.step  # per step: was the sampler running

    def watched(graph, *args):
        sampled.append(memory._thread.is_alive())
        return step(graph, *args)

    backend.step = watched
    prompt_len, new_tokens, past = 16, 6, 24
    result = run_bench(backend, manifest, prompt_len, new_tokens, batch=1, past_lengths=(past,), memory=memory)
    assert False in sampled, "the sampler ran during every step, the timed ones too"
    quiet = sampled.index(False)
    assert quiet > 0, "no step ran while the sampler ran: the memory figures would miss the steps' own memory"
    assert not any(sampled[quiet:]), "the sampler was started again during the timed runs"
    # the timed runs: a warm-up and 3 prefills, then the prompt's and the past's prefill with new_tokens + 1 decode steps each
    assert len(sampled) - quiet >= 4 + 2 * (1 + new_tokens)
    assert result["peak_anon_mb"] > 0 and result["peak_pss_mb"] > 0 and result["decode_tokens_per_s_at_past"][str(past)] > 0
