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


def test_the_sampler_counts_a_child_process_anonymous_memory():
    """A first open builds the pre-packed cache in a child process: PeakMemory(children=True) sees its
    anonymous memory (here a child that fills 96 MiB), and the peak of both processes together."""
    import subprocess
    import sys

    fill = "import sys; b = bytearray(96 * 2**20); b[::4096] = b'x' * len(b[::4096]); sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.readline()"
    with PeakMemory(interval_s=0.002, children=True) as memory:
        child = subprocess.Popen([sys.executable, "-c", fill], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ok\n"
        memory._sample()  # the child is holding its 96 MiB now
        child.communicate("\n")
    assert 96 <= memory.children_anon_mib < 96 + 64
    assert memory.total_anon_mib >= memory.children_anon_mib + memory.anon_mib * 0.5
    assert PeakMemory().start().stop().children_anon_mib == 0  # not sampled unless asked


def test_bench_reports_the_cache_builders_memory_on_a_first_open(moe_int4, tmp_path):
    """`bench` on an artifact whose pre-packed cache is not built yet: the open builds it in a child,
    whose peak anonymous memory bench reports (issue 31's bound for a first open is on it); the next
    run maps the cache and builds nothing."""
    import json

    from click.testing import CliRunner

    from nemotron_deploy.runtime.cli import main

    def bench() -> dict:
        args = ["bench", str(moe_int4), "--prompt-len", "4", "--new-tokens", "2", "--threads", "1", "--json", "--cache-dir", str(tmp_path)]
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        return json.loads(done.output.strip().splitlines()[-1])

    first, later = bench(), bench()
    # the builder imports onnxruntime and onnx and holds the model's packed weights: tens of MiB at least
    assert first["peak_cache_build_anon_mb"] > 30
    assert first["peak_cache_build_anon_x_weights"] == first["peak_cache_build_anon_mb"] / first["weights_mb"]
    assert "peak_cache_build_anon_mb" not in later
