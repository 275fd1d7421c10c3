"""`nemotron-deploy generate` / `bench` / `demo` end to end, and every bad input as one line."""

import json
import shutil

import pytest
from helpers import assert_one_line_error, run_cli
from hf_oracle import hf_greedy

from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE
from nemotron_deploy.runtime.session import Session


def test_generate_json_batch_of_prompt_ids(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups")
    result = run_cli(
        "generate", artifact, "--prompt-ids", "5,17,3,99,42,8", "--prompt-ids", "7,70", "--max-new-tokens", 12, "--ignore-eos", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["new_token_ids"] == [hf_greedy(ref, [5, 17, 3, 99, 42, 8], 12), hf_greedy(ref, [7, 70], 12)]
    assert "text" not in out  # no tokenizer in this artifact


def test_generate_threads(artifacts):
    ref, _, artifact = artifacts("hybrid_moe_groups")
    result = run_cli("generate", artifact, "--prompt-ids", "5,17,3", "--max-new-tokens", 8, "--ignore-eos", "--json", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["new_token_ids"] == [hf_greedy(ref, [5, 17, 3], 8)]
    refused = run_cli("generate", artifact, "--prompt-ids", "5", "--threads", 0)
    assert refused.exit_code == 2 and "--threads" in refused.output and "x>=1" in refused.output, refused.output


def test_sampling_is_seeded(artifacts):
    _, _, artifact = artifacts("hybrid_moe_groups")
    args = (
        "generate",
        artifact,
        "--prompt-ids",
        "5,6,7",
        "--max-new-tokens",
        10,
        "--ignore-eos",
        "--json",
        "--temperature",
        "1.5",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
    )
    a, b, c = run_cli(*args, "--seed", 1), run_cli(*args, "--seed", 1), run_cli(*args, "--seed", 2)
    assert a.output == b.output and a.output != c.output


def test_eos_stops_a_sequence(artifacts, tmp_path):
    ref, _, artifact = artifacts("hybrid_moe_groups")
    expected = hf_greedy(ref, [5, 6, 7], 10)
    copy = shutil.copytree(artifact, tmp_path / "a")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["generation"]["eos_token_ids"] = [expected[3]]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = Session(copy).generate([[5, 6, 7], [5, 6, 7, 8]], 10)
    first_eos = expected.index(expected[3])
    assert result.new_token_ids[0] == expected[: first_eos + 1] and result.finish_reasons[0] == "eos"
    assert len(Session(copy).generate([[5, 6, 7]], 10, ignore_eos=True).new_token_ids[0]) == 10


def test_state_out_then_state_in_prefills_only_the_rest(artifacts, tmp_path):
    ref, _, artifact = artifacts("hybrid_moe_groups")
    state = tmp_path / "system.safetensors"
    history, turn = "5,17,3,99,42,8,11", "5,17,3,99,42,8,11,64,30,31"
    saved = run_cli("generate", artifact, "--prompt-ids", history, "--max-new-tokens", 3, "--ignore-eos", "--json", "--state-out", state)
    assert saved.exit_code == 0, saved.output
    assert json.loads(saved.output)["new_token_ids"][0] == hf_greedy(ref, [5, 17, 3, 99, 42, 8, 11], 3)
    resumed = run_cli("generate", artifact, "--prompt-ids", turn, "--max-new-tokens", 6, "--ignore-eos", "--json", "--state-in", state)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["new_token_ids"][0] == hf_greedy(ref, [5, 17, 3, 99, 42, 8, 11, 64, 30, 31], 6)
    assert_one_line_error(
        run_cli("generate", artifact, "--prompt-ids", "7,70,71", "--state-in", state), "not the first tokens of the prompt"
    )
    state.write_bytes(state.read_bytes()[:100])
    assert_one_line_error(
        run_cli("generate", artifact, "--prompt-ids", turn, "--state-in", state), "system.safetensors: not a readable snapshot file"
    )


def test_bench_json(artifacts):
    _, _, artifact = artifacts("hybrid_moe_groups")
    result = run_cli("bench", artifact, "--prompt-len", 16, "--new-tokens", 4, "--batch", 2, "--past", 32, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["prefill_tokens_per_s"] > 0 and out["decode_tokens_per_s"] > 0 and "32" in out["decode_tokens_per_s_at_past"]
    assert out["memory_bandwidth_gb_per_s"] > 0 and 0 < out["decode_fraction_of_floor"]


def test_demo_text_end_to_end(tmp_path):
    result = run_cli("demo", "-o", tmp_path / "demo", "--max-new-tokens", 6)
    assert result.exit_code == 0, result.output
    artifact = tmp_path / "demo" / "onnx"
    out = run_cli("generate", artifact, "--prompt", "The runtime", "--prompt", "Mamba", "--max-new-tokens", 5, "--ignore-eos", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert len(data["text"]) == 2 and [len(ids) for ids in data["new_token_ids"]] == [5, 5]
    streamed = run_cli("generate", artifact, "--prompt", "The runtime", "--max-new-tokens", 5, "--ignore-eos", "--stream")
    assert streamed.exit_code == 0 and streamed.output.strip() == data["text"][0].strip()


# generate's bad arguments (ARTIFACT prepended), each a one-line error holding its message
BAD_ARGUMENTS = [
    (("--prompt", "hello"), "has no tokenizer.json"),
    (("--prompt-ids", "5,101,7"), "token id 101 is outside the vocabulary (0..100)"),
    (("--prompt-ids", ",".join(["5"] * 513)), "prompt 0 has 513 tokens, the model's maximum is 512"),
    (("--prompt-ids", "5,x"), "expected comma-separated integers"),
    ((), "give at least one --prompt"),
    (("--prompt-ids", "5", "--greedy", "--top-k", "3"), "--greedy cannot be combined"),
]


@pytest.mark.parametrize("args,message", BAD_ARGUMENTS, ids=[message for _, message in BAD_ARGUMENTS])
def test_bad_arguments_are_one_line_errors(artifacts, args, message):
    _, _, artifact = artifacts("hybrid_moe_groups")
    assert_one_line_error(run_cli("generate", artifact, *args), message)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    size = path.stat().st_size
    path.write_bytes(b"\x07garbage" * (size // 8) + b"\x07" * (size % 8))


def _format_version_99(path):
    path.write_text(json.dumps(dict(json.loads(path.read_text()), format_version=99)))


# (file of the artifact, damage done to it, message): each a one-line error of generate
DAMAGED_ARTIFACTS = [
    ("step.onnx", lambda path: path.unlink(), "step.onnx: missing (listed in manifest.json)"),
    ("weights.data", _truncate, "weights.data: "),
    ("step.onnx", _garbage, "step.onnx: not a readable ONNX model"),
    (MANIFEST_FILE, _format_version_99, "format_version 99, this nemotron-deploy reads version 1"),
    (MANIFEST_FILE, lambda path: path.unlink(), "manifest.json: missing"),
]


@pytest.mark.parametrize("file,damage,message", DAMAGED_ARTIFACTS, ids=[message for *_, message in DAMAGED_ARTIFACTS])
def test_damaged_artifacts_are_one_line_errors(artifacts, tmp_path, file, damage, message):
    _, _, artifact = artifacts("hybrid_moe_groups")
    broken = shutil.copytree(artifact, tmp_path / "broken")
    damage(broken / file)
    assert_one_line_error(run_cli("generate", broken, "--prompt-ids", "5"), message)


def test_a_missing_artifact_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("generate", tmp_path / "missing", "--prompt-ids", "5"), "not a directory")


EXPORT_CLI_ERRORS = [  # (arguments after the checkpoint and -o, message); nothing is written
    (("--dtype", "bfloat16"), "no bfloat16 kernels"),
    (("--quantize", "int4", "--target", "tensorrt"), "export --target onnxruntime to quantize"),
    (("--quantize", "int8", "--dtype", "float16"), "use --dtype float32"),
    (
        ("--quantize", "int4"),
        "--block-size 32 does not divide the input width of layers.0.mixer.in_proj.weight (shape 108x40: 40 input features)",
    ),
]


@pytest.mark.parametrize("args,message", EXPORT_CLI_ERRORS, ids=[message for _, message in EXPORT_CLI_ERRORS])
def test_export_cli_errors(hf_checkpoints, tmp_path, args, message):
    _, ckpt = hf_checkpoints("dense_mlp_biases")
    assert_one_line_error(run_cli("export", ckpt, "-o", tmp_path / "out", *args), message)
    assert not (tmp_path / "out").exists()


def test_export_of_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("export", tmp_path / "nope", "-o", tmp_path / "out"), "not a directory")
    assert not (tmp_path / "out").exists()


def test_runtime_needs_no_torch(artifacts):
    """A deployment box runs artifacts with numpy + onnxruntime only."""
    import subprocess
    import sys

    _, _, artifact = artifacts("hybrid_moe_groups")
    code = (
        "import sys; from nemotron_deploy.runtime.session import Session; "
        f"r = Session({str(artifact)!r}).generate([[5, 6, 7]], 4, ignore_eos=True); "
        "assert len(r.new_token_ids[0]) == 4; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
