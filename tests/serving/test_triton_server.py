"""A real tritonserver (nvidia-pytriton's) serving a `nemotron-deploy triton` repository, driven the way
TensorRT-LLM clients drive Triton: gRPC streaming with tritonclient, and HTTP generate for text.
The oracle is `nemotron-deploy generate` on the same artifact."""

import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner

from nemotron_deploy.runtime.cli import main
from nemotron_deploy.runtime.serving.triton.server import SHM_PREFIX, TritonServer

REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = {
    np.dtype(np.int32): "INT32",
    np.dtype(np.float32): "FP32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.object_): "BYTES",
}


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _shm_regions() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith(SHM_PREFIX)} if os.path.isdir("/dev/shm") else set()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, artifact): the demo checkpoint (mamba, MLP, MoE, attention; a tokenizer) exported for
    onnxruntime, its generate repository, and tritonserver on free loopback ports."""
    from nemotron_deploy.exporter.onnx_export import export_artifact
    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("triton")
    artifact = export_artifact(write_random_checkpoint(root / "checkpoint"), root / "artifact", progress=False)
    _cli("triton", artifact, "-o", root / "repository", "--max-batch", 8)
    shm_before = _shm_regions()
    server = TritonServer(root / "repository", log_file=root / "server.log")
    server.start()
    server.shm_before = shm_before
    yield server, artifact
    server.stop()


def _inputs(prompt, max_new_tokens, **extra) -> dict[str, np.ndarray]:
    one = lambda v, dtype: np.array([[v]], dtype=dtype)  # noqa: E731
    inputs = {
        "input_ids": np.array([prompt], dtype=np.int32),
        "request_output_len": one(max_new_tokens, np.int32),
        "streaming": one(True, np.bool_),
    }
    kinds = {
        "runtime_top_k": np.int32,
        "runtime_top_p": np.float32,
        "temperature": np.float32,
        "random_seed": np.uint64,
        "end_id": np.int32,
        "ignore_eos": np.bool_,
        "streaming": np.bool_,
        "input_lengths": np.int32,
        "repetition_penalty": np.float32,
        "presence_penalty": np.float32,
        "frequency_penalty": np.float32,
    }
    stops = extra.pop("stop_words", None)
    inputs.update({name: one(v, kinds[name]) for name, v in extra.items()})
    if stops is not None:
        inputs["stop_words"] = np.array([[s.encode() for s in stops]], dtype=np.object_)
    return inputs


class Stream:
    """One gRPC stream with one request: collects output arrays until the final response or an error."""

    def __init__(self, url: str, model: str, inputs: dict[str, np.ndarray], send: bool = True):
        """send=False: connect only; `send()` sends the request (streams meant to arrive together)."""
        self.client, self.model = grpcclient.InferenceServerClient(url), model
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        self.tensors = []
        for name, value in inputs.items():
            tensor = grpcclient.InferInput(name, list(value.shape), DTYPES[value.dtype])
            tensor.set_data_from_numpy(value)
            self.tensors.append(tensor)
        if send:
            self.send()

    def send(self) -> None:
        self.client.async_stream_infer(self.model, self.tensors, enable_empty_final_response=True)

    def next(self, timeout=60):
        return self.responses.get(timeout=timeout)

    def collect(self, output="output_ids") -> tuple[list, str | None, str | None]:
        """(outputs of every response, finish reason, error message)"""
        outputs, reason = [], None
        try:
            while True:
                result, error = self.next()
                if error is not None:
                    return outputs, reason, error.message()
                value = result.as_numpy(output)
                if value is not None:
                    outputs.append(value)
                    if output == "output_ids":
                        reason = result.as_numpy("finish_reason").reshape(-1)[0].decode() or None
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return outputs, reason, None
        finally:
            self.close()

    def close(self, cancel=False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _tokens(outputs) -> list[int]:
    return [int(t) for o in outputs for t in o.reshape(-1)]


def _in_parallel(fn, args_list):
    results = [None] * len(args_list)
    barrier = threading.Barrier(len(args_list))

    def run(i):
        barrier.wait()
        results[i] = fn(*args_list[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def test_ready_waits_for_the_grpc_and_metrics_ports(tmp_path):
    """Ready means every endpoint answers: HTTP's health alone came before the metrics port listened."""
    import socket

    server = TritonServer(tmp_path)
    listeners = []
    try:
        for port in (server.endpoints.grpc, server.endpoints.metrics):
            assert not server._other_endpoints_listen()
            sock = socket.socket()
            sock.bind((server.endpoints.host, port))
            sock.listen()
            listeners.append(sock)
        assert server._other_endpoints_listen()
    finally:
        for sock in listeners:
            sock.close()


def _metrics(server) -> dict[str, float]:
    """Our counters from Triton's /metrics, summed over instances."""
    with urllib.request.urlopen(server.endpoints.metrics_url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for name, value in re.findall(r"^(nemotron_\w+)\{[^}]*\} (\S+)$", text, re.M):
        out[name] = out.get(name, 0) + float(value)
    return out


def _settled_metrics(server, finished_before: float, expected: int) -> dict[str, float]:
    """Metrics once `expected` more sequences have finished and the batch is empty (they are flushed when idle)."""
    for _ in range(100):
        m = _metrics(server)
        if m.get("nemotron_sequences_total", 0) >= finished_before + expected and m.get("nemotron_active_sequences", 1) == 0:
            return m
        threading.Event().wait(0.1)
    raise AssertionError(f"metrics did not settle: {m}\n{server.log_tail()}")


def _generate(artifact, prompt_ids, n, *extra) -> list[int]:
    out = json.loads(_cli("generate", artifact, "--prompt-ids", ",".join(map(str, prompt_ids)), "--max-new-tokens", n, "--json", *extra))
    return out["new_token_ids"][0]


PROMPTS = [[5, 17, 3, 99, 42, 8], [7, 70], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [64, 65, 66]]
LENGTHS = [6, 10, 14, 18]


def test_concurrent_greedy_streams_equal_generate_in_about_max_steps(served):
    server, artifact = served
    before = _metrics(server)
    # connected first, then the requests sent back to back: under load, connecting in each thread after a
    # barrier staggered their arrival by more than the shorter streams last (38 steps of 44 serial, once)
    streams = [
        Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(p, n, ignore_eos=True), send=False) for p, n in zip(PROMPTS, LENGTHS)
    ]
    for stream in streams:
        stream.send()
    runs = [stream.collect() for stream in streams]  # each stream's responses queue up meanwhile
    for (outputs, reason, error), prompt, n in zip(runs, PROMPTS, LENGTHS):
        assert error is None and reason == "length"
        assert all(o.shape == (1, 1, 1) for o in outputs)  # one new token per streamed response
        assert _tokens(outputs) == _generate(artifact, prompt, n, "--ignore-eos")
    after = _settled_metrics(server, before.get("nemotron_sequences_total", 0), len(PROMPTS))
    steps = after["nemotron_decode_steps_total"] - before.get("nemotron_decode_steps_total", 0)
    serial = sum(n - 1 for n in LENGTHS)  # what one sequence at a time would take
    assert max(LENGTHS) - 1 <= steps < 0.75 * serial, (steps, serial)
    assert after["nemotron_tokens_total"] - before.get("nemotron_tokens_total", 0) == sum(LENGTHS)


def test_eos_and_non_streaming_response(served):
    server, artifact = served
    expected = _generate(artifact, PROMPTS[0], 12)  # stops at the model's EOS or after 12
    outputs, reason, error = Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(PROMPTS[0], 12, streaming=False)).collect()
    assert error is None and len(outputs) == 1 and _tokens(outputs) == expected
    assert reason == ("eos" if len(expected) < 12 else "length")
    stop = expected[2]
    outputs, reason, _ = Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(PROMPTS[0], 12, end_id=stop)).collect()
    assert _tokens(outputs) == expected[: expected.index(stop) + 1] and reason == "eos"


def test_seeded_sampling_reproduces(served):
    server, artifact = served
    sampling = dict(temperature=0.8, runtime_top_k=30, runtime_top_p=0.9, random_seed=2024, ignore_eos=True)
    runs = _in_parallel(
        lambda p: Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(p, 12, **sampling)).collect(),
        [(PROMPTS[2],), (PROMPTS[2],), (PROMPTS[1],)],
    )
    expected = _generate(artifact, PROMPTS[2], 12, "--temperature", 0.8, "--top-k", 30, "--top-p", 0.9, "--seed", 2024, "--ignore-eos")
    assert _tokens(runs[0][0]) == _tokens(runs[1][0]) == expected
    other_seed = Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(PROMPTS[2], 12, **dict(sampling, random_seed=7))).collect()
    assert _tokens(other_seed[0]) != expected


BAD = [
    (_inputs([5, 128, 7], 4), "input_ids: token id 128 is outside the vocabulary (0..127)"),
    (_inputs([], 4), "input_ids: empty prompt"),
    (_inputs([5] * 1024, 4), "input_ids: 1024 tokens leave no room to generate within the model's maximum of 1024"),
    (_inputs([5, 6], -3), "request_output_len: -3; expected >= 1"),
    (_inputs([5, 6], 4, runtime_top_p=0.0), "runtime_top_p: 0.0; expected a number in (0, 1]"),
    (_inputs([5, 6], 4, runtime_top_p=1.5), "runtime_top_p: 1.5; expected a number in (0, 1]"),
    (_inputs([5, 6], 4, temperature=0.0), "temperature: 0.0; expected a number > 0"),
    (_inputs([5, 6, 7], 4, input_lengths=5), "input_lengths: 5, but input_ids has 3 tokens"),
    (_inputs([5, 6], 4, repetition_penalty=0.0), "repetition_penalty: 0.0; expected a number > 0"),
    (_inputs([5, 6], 4, presence_penalty=2.5), "presence_penalty: 2.5; expected a number in [-2, 2]"),
]


def test_bad_requests_get_errors_while_a_good_stream_completes(served):
    server, artifact = served
    good = Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(PROMPTS[3], 16, ignore_eos=True))
    errors = _in_parallel(
        lambda inputs: Stream(server.endpoints.grpc_url, "tensorrt_llm", inputs).collect()[2], [(inputs,) for inputs, _ in BAD]
    )
    for error, (_, message) in zip(errors, BAD):
        assert error is not None and message in error, (error, message)
    outputs, reason, error = good.collect()
    assert error is None and _tokens(outputs) == _generate(artifact, PROMPTS[3], 16, "--ignore-eos")
    assert server.process.poll() is None


def test_a_client_that_goes_away_frees_its_slot(served):
    server, _ = served
    before = _metrics(server)
    stream = Stream(server.endpoints.grpc_url, "tensorrt_llm", _inputs(PROMPTS[0], 900, ignore_eos=True))
    for _ in range(3):
        result, error = stream.next()
        assert error is None
    stream.close(cancel=True)
    after = _settled_metrics(server, before.get("nemotron_sequences_total", 0), 1)
    assert after["nemotron_tokens_total"] - before.get("nemotron_tokens_total", 0) < 900


def test_text_ensemble_streams_the_text_generate_prints(served):
    server, artifact = served
    expected = json.loads(_cli("generate", artifact, "--prompt", "The runtime", "--max-new-tokens", 8, "--ignore-eos", "--json"))["text"][0]
    one = lambda v, dtype: np.array([[v]], dtype=dtype)  # noqa: E731
    inputs = {
        "text_input": np.array([[b"The runtime"]], dtype=np.object_),
        "max_tokens": one(8, np.int32),
        "stream": one(True, np.bool_),
        "ignore_eos": one(True, np.bool_),
    }
    pieces, _, error = Stream(server.endpoints.grpc_url, "ensemble", inputs).collect("text_output")
    assert error is None and len(pieces) == 8
    assert "".join(p.reshape(-1)[0].decode() for p in pieces) == expected
    # TensorRT-LLM's HTTP generate endpoint on the ensemble, not streamed
    body = json.dumps({"text_input": "The runtime", "max_tokens": 8, "ignore_eos": True}).encode()
    request = urllib.request.Request(
        f"http://{server.endpoints.http_url}/v2/models/ensemble/generate", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["text_output"] == expected


def test_penalties_and_stop_strings_equal_generate(served):
    """TensorRT-LLM's names for penalties and stop strings, streamed and not: the tokens and text of
    `nemotron-deploy generate` with the same options; a stop string ends the stream with "stop"."""
    server, artifact = served
    url = server.endpoints.grpc_url
    penalties = dict(repetition_penalty=1.6, presence_penalty=0.8, frequency_penalty=0.5)
    outputs, reason, error = Stream(url, "tensorrt_llm", _inputs(PROMPTS[2], 14, ignore_eos=True, **penalties)).collect()
    assert error is None and reason == "length"
    assert _tokens(outputs) == _generate(
        artifact, PROMPTS[2], 14, "--ignore-eos", "--repetition-penalty", 1.6, "--presence-penalty", 0.8, "--frequency-penalty", 0.5
    )
    assert _tokens(outputs) != _generate(artifact, PROMPTS[2], 14, "--ignore-eos")
    full = json.loads(_cli("generate", artifact, "--prompt", "The runtime", "--max-new-tokens", 16, "--ignore-eos", "--json"))["text"][0]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    want = json.loads(
        _cli("generate", artifact, "--prompt", "The runtime", "--max-new-tokens", 16, "--ignore-eos", "--stop", stop, "--json")
    )
    assert want["finish_reasons"] == ["stop"]
    prompt = _encode(artifact, "The runtime")
    for streaming in (True, False):
        inputs = _inputs(prompt, 16, ignore_eos=True, streaming=streaming, stop_words=["never-there", stop])
        stream = Stream(url, "tensorrt_llm", inputs)
        outputs, reason, error = stream.collect()
        assert error is None and reason == "stop" and _tokens(outputs) == want["new_token_ids"][0]
        texts, _, error = Stream(url, "tensorrt_llm", inputs).collect("text_output")
        assert error is None and "".join(t.reshape(-1)[0].decode() for t in texts) == want["text"][0] == full[: full.index(stop)]


def test_the_ensemble_takes_what_tritons_openai_frontend_sends(served):
    """The inputs Triton's own OpenAI frontend sends to a TensorRT-LLM ensemble (text_input, stream,
    max_tokens, stop_words, top_p, temperature, seed, presence/frequency penalties): the text of
    `generate` with the same options."""
    server, artifact = served
    f32 = lambda v: np.array([[v]], dtype=np.float32)  # noqa: E731
    inputs = {
        "text_input": np.array([[b"The runtime"]], dtype=np.object_),
        "stream": np.array([[True]]),
        "max_tokens": np.array([[12]], dtype=np.int32),
        "stop_words": np.array([[b"zz-never"]], dtype=np.object_),
        "top_p": f32(0.9),
        "temperature": f32(0.8),
        "seed": np.array([[11]], dtype=np.uint64),
        "presence_penalty": f32(0.5),
        "frequency_penalty": f32(0.3),
    }
    pieces, _, error = Stream(server.endpoints.grpc_url, "ensemble", inputs).collect("text_output")
    assert error is None
    want = json.loads(
        _cli(
            "generate",
            artifact,
            "--prompt",
            "The runtime",
            "--max-new-tokens",
            12,
            "--top-p",
            0.9,
            "--temperature",
            0.8,
            "--seed",
            11,
            "--presence-penalty",
            0.5,
            "--frequency-penalty",
            0.3,
            "--stop",
            "zz-never",
            "--json",
        )
    )["text"][0]
    assert "".join(p.reshape(-1)[0].decode() for p in pieces) == want


def _encode(artifact, text: str) -> list[int]:
    from nemotron_deploy.runtime.session import Session

    return Session(artifact).encode(text)


def test_client_example(served):
    server, artifact = served
    example = REPO_ROOT / "docs" / "examples" / "triton_stream.py"
    out = subprocess.run(
        [sys.executable, str(example), "--url", server.endpoints.grpc_url, "--prompt-ids", "5,17,42", "--max-new-tokens", "6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert [int(t) for t in out.stdout.split()] == _generate(artifact, [5, 17, 42], 6)


def test_shutdown_is_clean(served):
    """Last: stops the module's server. Nothing of it may be left: processes or shared memory."""
    server, _ = served
    pgid = server.process.pid
    assert server.stop() == 0, server.log_tail()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # no backend stub left in the server's process group
    assert _shm_regions() <= server.shm_before


def test_serve_command_runs_until_interrupted(tmp_path):
    """`nemotron-deploy serve` as a user runs it (two instances): ready on the given ports, serving, and Ctrl-C
    (SIGINT) stops it and its server; also when started with SIGINT ignored, as a non-interactive shell
    starts a background job (Python then raises no KeyboardInterrupt unless serve installs its handler)."""
    import signal
    import time

    from nemotron_deploy.exporter.onnx_export import export_artifact
    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint
    from nemotron_deploy.runtime.serving.triton.server import free_port

    artifact = export_artifact(write_random_checkpoint(tmp_path / "ckpt"), tmp_path / "art", progress=False)
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "nemotron_deploy.runtime.cli",
        "serve",
        str(artifact),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--openai-port",
        str(free_port()),
        "--instances",
        "2",
        "--threads",
        "1",
    ]
    serve = subprocess.Popen(["bash", "-c", 'trap "" INT; exec "$@"', "serve", *command], stderr=subprocess.PIPE, text=True)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and serve.poll() is None:
            try:
                if client.is_server_ready() and client.is_model_ready("ensemble"):
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.3)
        assert client.is_model_ready("tensorrt_llm")
        client.close()
        runs = _in_parallel(
            lambda p, n: Stream(f"127.0.0.1:{grpc}", "tensorrt_llm", _inputs(p, n, ignore_eos=True)).collect(),
            list(zip(PROMPTS[:2], LENGTHS[:2])),
        )
        for (outputs, _, error), prompt, n in zip(runs, PROMPTS, LENGTHS):  # two instances, each its own batch
            assert error is None and _tokens(outputs) == _generate(artifact, prompt, n, "--ignore-eos")
        serve.send_signal(signal.SIGINT)
        _, stderr = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, stderr[-3000:]
    assert f"gRPC 127.0.0.1:{grpc}" in stderr and stderr.rstrip().endswith("stopped")
    leftover = subprocess.run(["pgrep", "-f", f"tritonserver.*--grpc-port={grpc}"], capture_output=True, text=True).stdout
    assert leftover == ""


def test_a_killed_serve_leaves_no_server_behind(tmp_path):
    """SIGKILL of `serve` (the OOM killer's way): its tritonserver and the backend stubs die with it
    within seconds, and the next start removes the temporary repository it left."""
    import signal
    import time

    from http_wait import wait_for_http

    from nemotron_deploy.exporter.onnx_export import export_artifact
    from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint
    from nemotron_deploy.runtime.serving.triton.server import OWNER_FILE, TEMP_PREFIX, free_port, remove_stale_temp_dirs

    artifact = export_artifact(write_random_checkpoint(tmp_path / "ckpt", config=TINY_CONFIG), tmp_path / "art", progress=False)
    http, grpc = free_port(), free_port()
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nemotron_deploy.runtime.cli",
            "serve",
            str(artifact),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(free_port()),
            "--openai-port",
            str(free_port()),
            "--threads",
            "1",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_http(f"http://127.0.0.1:{http}/v2/health/ready", serve)
        owned = [
            d
            for d in Path(tempfile_dir()).glob(f"{TEMP_PREFIX}*")
            if (d / OWNER_FILE).is_file() and (d / OWNER_FILE).read_text() == str(serve.pid)
        ]
        assert len(owned) == 2, owned  # serve's repository and the server's backend folder
        repository = next(d for d in owned if (d / "repository").is_dir())
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        left = ""
        for _ in range(50):
            left = subprocess.run(["pgrep", "-f", f"--grpc-port={grpc}|{repository}"], capture_output=True, text=True).stdout
            if not left:
                break
            time.sleep(0.2)
        assert left == "", f"processes of the killed serve still running: {left}"
        assert all(d.exists() for d in owned)  # nothing cleaned up after a SIGKILL ...
        assert set(owned) <= set(remove_stale_temp_dirs()) and not any(d.exists() for d in owned)  # ... until the next start
    finally:
        if serve.poll() is None:
            serve.kill()


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()
