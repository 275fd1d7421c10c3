"""The C++ runtime, compiled here by `nemotron-deploy cpp build` (against TensorRT 10.14's headers and
the CUDA runtime, no GPU) and run: its probe and example program against the Python runtime, which is
the reference for manifests, the sampler's distributions and the decode loop's bookkeeping."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from manifest_mutations import complete_manifest, engine_record, schema_mutations

from nemotron_deploy.runtime import decode
from nemotron_deploy.runtime.artifact.dtypes import dtype_bytes
from nemotron_deploy.runtime.artifact.manifest import MANIFEST, MANIFEST_FILE, ArtifactError, initial_state_shapes, read_manifest, to_json
from nemotron_deploy.runtime.backends.interface import Backend
from nemotron_deploy.runtime.cli import main
from nemotron_deploy.runtime.sampling import Sampling, filtered_probabilities


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpp")
    result = CliRunner().invoke(main, ["cpp", "build", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def _probe(built, *args, stdin=None):
    done = subprocess.run(
        [built["probe"], *map(str, args)], input=None if stdin is None else json.dumps(stdin), capture_output=True, text=True, timeout=60
    )
    assert done.returncode in (0, 2) and done.stderr == "", done.stderr
    line = done.stdout.strip()
    assert "\n" not in line
    return line[len("error: ") :] if done.returncode == 2 else json.loads(line), done.returncode == 2


@pytest.mark.parametrize(
    "name,dtype,target",
    [
        ("hybrid_moe_groups", "float32", "onnxruntime"),
        ("latent_moe_tied_odd", "float16", "onnxruntime"),
        ("hybrid_moe_groups", "bfloat16", "tensorrt"),
        ("dense_mlp_biases", "float32", "onnxruntime"),
    ],
)
def test_manifest_as_python_reads_it(built, artifacts, name, dtype, target):
    _, _, artifact = artifacts(name, dtype, target)
    out, failed = _probe(built, "manifest", artifact)
    assert not failed, out
    m = read_manifest(artifact)
    assert (out["target"], out["dtype"], out["vocab_size"], out["max_length"]) == (
        m.target,
        m.dtype,
        m.model.vocab_size,
        m.model.max_position_embeddings,
    )
    assert out["layer_types"] == list(m.model.layer_types)
    assert out["eos_token_ids"] == list(m.generation.eos_token_ids) and out["pad_token_id"] == (m.generation.pad_token_id or 0)
    assert out["plugins"] == to_json(m.plugins)
    shapes = initial_state_shapes(m, 2)
    assert [s["name"] for s in out["states"]] == [s.name for s in m.states]
    for cpp, py in zip(out["states"], m.states):
        assert (cpp["present"], cpp["role"], cpp["dtype"], cpp["shape"]) == (py.present, py.role, py.dtype, list(py.shape))
        assert cpp["initial_shape_batch_2"] == list(shapes[py.name][0])
        assert cpp["bytes_per_element"] == dtype_bytes(py.dtype)


def test_damaged_manifests_name_the_field_python_names(built, artifacts, tmp_path):
    """Every value of the manifest schema (runtime/artifact/manifest.py) damaged in turn, in a manifest
    that has every part the schema has: where the schema says the C++ reader checks the value, both
    readers refuse it with the same line or both read it; elsewhere the C++ reader reads it."""
    _, _, artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    copy = shutil.copytree(artifact, tmp_path / "damaged")
    raw = complete_manifest(json.loads((copy / MANIFEST_FILE).read_text()))
    refused = set()
    for name, _, cpp_checks, kind, mutated, _ in schema_mutations(raw, MANIFEST):
        (copy / MANIFEST_FILE).write_text(json.dumps(mutated))
        message, failed = _probe(built, "manifest", copy)
        if not cpp_checks:
            assert not failed, (name, kind, message)
            continue
        try:
            read_manifest(copy)
            python = None
        except ArtifactError as e:
            python = str(e)
        assert (message if failed else None) == python, (name, kind)
        if failed:
            refused.add(name)
    assert len(refused) >= 40  # the fields the C++ runtime reads
    for text, expected in [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps(dict(raw, format_version=2)), "format_version 2"),
    ]:
        (copy / MANIFEST_FILE).write_text(text)
        message, failed = _probe(built, "manifest", copy)
        assert failed and expected in message and str(copy / MANIFEST_FILE) in message
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    (copy / "weights.data").write_bytes(b"short")
    message, failed = _probe(built, "manifest", copy)
    assert failed and message.startswith(f"{copy / 'weights.data'}: 5 bytes, manifest.json records")
    message, failed = _probe(built, "manifest", tmp_path / "nowhere")
    assert failed and "not a directory" in message


SAMPLINGS = [
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_k=1),
    dict(top_p=0.8),
    dict(temperature=1.3, top_k=20, top_p=0.9),
    dict(temperature=0.5, top_p=0.3, top_k=3),
]


@pytest.mark.parametrize("config", SAMPLINGS)
def test_sampler_draws_from_the_python_distribution(built, config):
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((4, 50)) * 3).astype(np.float32)
    logits[1, 10:13] = logits[1].max() + 1  # ties at the top
    out, failed = _probe(built, "sample", stdin={"logits": logits.tolist(), "sampling": dict(config, seed=11), "draws": 200})
    assert not failed, out
    expected = filtered_probabilities(logits, Sampling(**config))
    np.testing.assert_allclose(np.array(out["probabilities"]), expected, rtol=1e-6, atol=1e-12)
    assert out["greedy"] == logits.argmax(-1).tolist()
    for row, draws in zip(expected, out["draws"]):
        assert all(row[t] > 0 for t in draws)  # never outside the filtered support
    again, _ = _probe(built, "sample", stdin={"logits": logits.tolist(), "sampling": dict(config, seed=11), "draws": 200})
    assert again["draws"] == out["draws"]  # seeded


PENALTIES = [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.6),
    dict(presence_penalty=0.5, frequency_penalty=0.8),
    dict(repetition_penalty=1.8, presence_penalty=-1.0, frequency_penalty=2.0),
]


@pytest.mark.parametrize("config", PENALTIES)
def test_penalties_equal_python_and_transformers_processors(built, config):
    """The C++ penalties on recorded logits: bit-equal to the Python sampler's, which transformers'
    RepetitionPenaltyLogitsProcessor and the OpenAI definition check (tests/runtime/test_stop_and_penalties.py);
    checked against transformers' processor here too."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from nemotron_deploy.runtime.sampling import penalize

    rng = np.random.default_rng(3)
    for _ in range(4):
        logits = (rng.standard_normal((1, 60)) * 3).astype(np.float32)
        prompt, output = rng.integers(0, 60, 10).tolist(), rng.integers(0, 60, 8).tolist() + [7, 7, 7]
        out, failed = _probe(
            built, "penalize", stdin={"logits": logits[0].tolist(), "sampling": config, "prompt": prompt, "output": output}
        )
        assert not failed, out
        want = penalize(logits, Sampling(**config), [prompt], [output])[0]
        np.testing.assert_array_equal(np.array(out["logits"], dtype=np.float32), want)
        assert out["token"] == int(want.argmax()) and not np.array_equal(want, logits[0])
        if set(config) == {"repetition_penalty"}:
            hf = RepetitionPenaltyLogitsProcessor(config["repetition_penalty"])(
                torch.tensor([prompt + output]), torch.from_numpy(logits.copy())
            )
            np.testing.assert_array_equal(np.array(out["logits"], dtype=np.float32), hf.numpy()[0])
    out, failed = _probe(
        built, "penalize", stdin={"logits": [0.0, 1.0], "sampling": dict(presence_penalty=3.0), "prompt": [0], "output": [1]}
    )
    assert failed and "presence_penalty 3.0" in out


def test_sampler_errors(built):
    for config, message in [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=-2, temperature=0.5), "top_k -2"),
        (dict(top_p=1.5), "top_p 1.5"),
    ]:
        out, failed = _probe(built, "sample", stdin={"logits": [[0.0, 1.0]], "sampling": config})
        assert failed and message in out


class CountingBackend(Backend):
    """The probe's test engine, in Python: each row's next token is (its last input token + 1) % vocab."""

    def __init__(self, vocab):
        self.vocab, self.trace = vocab, []

    def initial_state(self, batch):
        self.trace.append({"call": "reset", "batch": batch})
        return {}

    def step(self, graph, ids, mask, state):
        self.trace.append(
            {
                "call": graph,
                "new_tokens": ids.shape[1],
                "total_len": mask.shape[1],
                "ids": ids.ravel().tolist(),
                "mask": mask.ravel().tolist(),
            }
        )
        logits = np.zeros((ids.shape[0], self.vocab), dtype=np.float32)
        logits[np.arange(ids.shape[0]), (ids[:, -1] + 1) % self.vocab] = 1.0
        return logits, state


DECODES = [
    ([[5, 6, 7], [1], [9, 9]], dict(max_new_tokens=6, eos_token_ids=[12], pad_token_id=0, max_length=64)),  # row 0 meets EOS
    ([[5, 6, 7, 8, 9, 10, 11], [3, 4]], dict(max_new_tokens=8, eos_token_ids=[], pad_token_id=2, max_length=64, prefill_chunk_size=3)),
    ([[1, 2, 3], [4]], dict(max_new_tokens=10, eos_token_ids=[0], pad_token_id=0, max_length=6)),  # the model's length limit
    ([[15, 16]], dict(max_new_tokens=1, eos_token_ids=[], pad_token_id=0, max_length=64)),
    ([[15, 16], [3]], dict(max_new_tokens=5, eos_token_ids=[17, 5], pad_token_id=1, max_length=64)),  # both stop early: the loop ends
    # penalties: a token already generated drops below the others (frequency), prompt tokens shrink (repetition)
    (
        [[5, 6, 7], [3, 3]],
        dict(
            max_new_tokens=9, eos_token_ids=[], pad_token_id=0, max_length=64, sampling=dict(repetition_penalty=2.0, frequency_penalty=1.5)
        ),
    ),
]


@pytest.mark.parametrize("prompts,options", DECODES)
def test_decode_loop_bookkeeping_equals_python(built, prompts, options):
    vocab = 20
    out, failed = _probe(built, "decode", stdin={"prompts": prompts, "vocab": vocab, "options": options})
    assert not failed, out
    backend = CountingBackend(vocab)
    streamed = []
    py = decode.generate(
        backend,
        prompts,
        max_new_tokens=options["max_new_tokens"],
        eos_token_ids=options["eos_token_ids"],
        pad_token_id=options["pad_token_id"],
        max_length=options["max_length"],
        sampling=Sampling(**options.get("sampling", {})),
        prefill_chunk_size=options.get("prefill_chunk_size"),
        on_token=lambda r, t: streamed.append([r, t]),
    )
    assert out["new_token_ids"] == py.new_token_ids and out["finish_reasons"] == py.finish_reasons
    assert out["streamed"] == streamed
    assert out["trace"] == backend.trace  # same calls: padding, chunks, masks, finished rows fed the pad id


def test_decode_loop_errors(built):
    base = {"vocab": 20, "options": dict(max_new_tokens=4, max_length=8)}
    for prompts, message in [
        ([[1, 20]], "prompt 0: token id 20 is outside the vocabulary (0..19)"),
        ([[1], []], "prompt 1 is empty"),
        ([[1] * 9], "prompt 0 has 9 tokens, the model's maximum is 8"),
        ([], "no prompt given"),
    ]:
        out, failed = _probe(built, "decode", stdin=dict(base, prompts=prompts))
        assert failed and message in out, out


def test_example_program_errors_without_a_gpu(built, artifacts, tmp_path):
    _, _, artifact = artifacts("hybrid_moe_groups")

    def run(*args):
        done = subprocess.run([built["example"], *map(str, args)], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr.strip()

    assert (
        run("--artifact", artifact, "--prompt-ids", "1,2")[1]
        == f"error: {artifact}: no TensorRT engines; build them first: nemotron-deploy build {artifact} --engine tensorrt"
    )
    assert run("--artifact", artifact, "--prompt-ids", "1,x")[0] == 2
    assert "unknown option --nope" in run("--nope")[1]
    code, err = run("--artifact", tmp_path / "nowhere", "--prompt-ids", "1")
    assert code == 2 and err.startswith("error: ") and "not a directory" in err
    # an artifact with a recorded build: the runtime gets as far as the GPU and says what is missing
    copy = shutil.copytree(artifact, tmp_path / "a")
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    raw["engines"] = {"tensorrt": engine_record(version="10.14.1.48")}
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    code, err = run("--artifact", copy, "--prompt-ids", "1,2")
    assert code == 2 and err.startswith("error: cudaSetDevice(0): ") and "\n" not in err


def test_engine_checks_before_the_gpu_equal_python(built, artifacts, tmp_path):
    """Which engine, the TensorRT version and the GPU a plan was built for: the Python backend's checks and messages."""
    from nemotron_deploy.runtime.backends.tensorrt_backend import check_gpu, check_trt_version, pick_engine

    _, _, artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    copy = shutil.copytree(artifact, tmp_path / "a")
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    record = engine_record()
    m = read_manifest(copy)
    message, failed = _probe(built, "check-engine", copy, "", "10.14.1", "90", "H100")
    with pytest.raises(ArtifactError) as python:
        pick_engine(m, None)
    assert failed and message == str(python.value)
    raw["engines"] = {"tensorrt": record}
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    m = read_manifest(copy)
    plan = copy / "prefill.plan"
    assert _probe(built, "check-engine", copy, "", "10.14.1", "90", "H100") == ({"kind": "tensorrt", "prefill": str(plan)}, False)
    for version, capability, name in [("10.13.3", "90", "H100"), ("10.14.1", "80", "A100-SXM4-80GB")]:
        message, failed = _probe(built, "check-engine", copy, "tensorrt", version, capability, name)
        with pytest.raises(ArtifactError) as python:
            check_trt_version(m.engines["tensorrt"], version, plan)
            check_gpu(m.engines["tensorrt"], capability, name, plan)
        assert failed and message == str(python.value)
    message, failed = _probe(built, "check-engine", copy, "tensorrt-rtx", "10.14.1", "90", "H100")
    assert failed and "no tensorrt-rtx engines; build them first" in message


def test_a_cmake_project_uses_the_installed_package(built, tmp_path):
    """find_package(nemotron_deploy_runtime) after `cmake --install`, compiling the embedding example of docs/cpp.md."""
    from pathlib import Path

    build_dir = Path(built["library"]).parent / "build"
    install = subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(tmp_path / "prefix")], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cpp.md").read_text()
    example = doc.split("```cpp\n", 1)[1].split("```", 1)[0]
    project = tmp_path / "app"
    project.mkdir()
    (project / "main.cpp").write_text(example)
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.22)\nproject(app CXX)\nset(CMAKE_CXX_STANDARD 17)\n"
        "find_package(nemotron_deploy_runtime REQUIRED)\nadd_executable(app main.cpp)\ntarget_link_libraries(app PRIVATE nemotron_deploy::runtime)\n"
    )
    for cmd in (
        ["cmake", "-S", str(project), "-B", str(project / "build"), f"-DCMAKE_PREFIX_PATH={tmp_path / 'prefix'}"],
        ["cmake", "--build", str(project / "build")],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = subprocess.run([str(project / "build" / "app")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("error: nemotron-h-4b/trt: not a directory")  # it ran, and said why it stopped


def test_cpp_build_errors(tmp_path):
    result = CliRunner().invoke(main, ["cpp", "build", "-o", str(tmp_path / "out"), "--tensorrt-include", str(tmp_path)])
    assert (
        result.exit_code == 2
        and result.output.strip().splitlines()[-1] == f"error: TensorRT include directory {tmp_path} has no NvInferRuntime.h"
    )
    assert not (tmp_path / "out").exists()


def test_cpp_build_without_nlohmann_json_names_the_package_to_install(tmp_path, monkeypatch):
    """Real CMake, told that no nlohmann_json package exists (CMAKE_DISABLE_FIND_PACKAGE): the one error
    line names the package and how to install it, not CMake's find_package line."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH: the C++ runtime cannot be configured")
    wrapper = tmp_path / "bin" / "cmake"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\ncase " $* " in *" -S "*) exec {cmake} -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=TRUE "$@";; esac\nexec {cmake} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    result = CliRunner().invoke(main, ["cpp", "build", "-o", str(tmp_path / "out")])
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2, result.output
    assert last.startswith("error: the C++ runtime reads manifests with nlohmann/json (>= 3.10), and CMake found no nlohmann_json package")
    assert "apt-get install nlohmann-json3-dev" in last and "CMake Error" not in last
