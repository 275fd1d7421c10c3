"""What a new user meets in the first hour: partial installs, output paths, re-running the demo, the
Python API's defaults, generate's output, bench's memory figure, Ctrl-C, damaged or corrupted artifacts."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from manifest_mutations import damaged_copies

from nemotron_deploy.runtime import cli
from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE
from nemotron_deploy.runtime.sampling import Sampler, Sampling
from nemotron_deploy.runtime.session import Session


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A demo output (checkpoint + artifact with a tokenizer), made by the CLI once."""
    root = tmp_path_factory.mktemp("first-hour") / "demo"
    result = run_cli("demo", "-o", root, "--max-new-tokens", 3)
    assert result.exit_code == 0, result.output
    return root


# ---------------------------------------------------------------------------------------- 1. extras

# What each install lacks, simulated by a finder that makes those imports fail as a missing package does.
CORE_ONLY = [
    "torch",
    "onnx",
    "onnxscript",
    "onnx_ir",
    "onnx_graphsurgeon",
    "tqdm",
    "safetensors",
    "tokenizers",
    "onnxruntime",
    "transformers",
    "tensorrt_rtx",
]
ONNXRUNTIME_ONLY = ["torch", "onnxscript", "onnx_ir", "onnx_graphsurgeon", "tqdm", "safetensors", "transformers", "tensorrt_rtx"]
_BLOCKING_CLI = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from nemotron_deploy.runtime.cli import main
main()
"""


def _cli_without(blocked, *args):
    done = subprocess.run([sys.executable, "-c", _BLOCKING_CLI, ",".join(blocked), *map(str, args)], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("install", ["core", "onnxruntime"])
def test_every_command_works_or_names_its_extra(install, demo_dir, tmp_path):
    blocked = CORE_ONLY if install == "core" else ONNXRUNTIME_ONLY
    checkpoint, artifact = demo_dir / "checkpoint", demo_dir / "onnx"
    code, out, err = _cli_without(blocked, "inspect", checkpoint, "--json")
    assert code == 0 and json.loads(out)["num_parameters"] > 0, err
    code, out, err = _cli_without(blocked, "verify", artifact)
    assert code == 0 and out.startswith("ok: "), err
    code, out, err = _cli_without(blocked, "export", checkpoint, "-o", tmp_path / "x")
    assert (code, err.strip()) == (
        2,
        "error: 'nemotron-deploy export' needs the 'export' extra (torch is not installed): pip install 'nemotron-deploy[export]'",
    )
    code, out, err = _cli_without(blocked, "demo", "-o", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1 and "pip install 'nemotron-deploy[export]'" in err
    code, out, err = _cli_without(blocked, "generate", artifact, "--prompt-ids", "5,6", "--max-new-tokens", 2)
    if install == "core":
        assert (code, err.strip()) == (
            2,
            "error: 'nemotron-deploy generate' needs the 'onnxruntime' extra (onnxruntime is not installed): pip install 'nemotron-deploy[onnxruntime]'",
        )
    else:
        assert code == 0 and out.strip(), err
    assert not (tmp_path / "x").exists() and not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------- 2. paths


def test_output_paths_are_checked_before_any_work(demo_dir, tmp_path):
    checkpoint = demo_dir / "checkpoint"
    (tmp_path / "a_file").write_text("x")
    for bad, text in (
        ("/proc/x", "/proc/x: cannot create a directory there"),
        ("/sys/x", "/sys/x: cannot create a directory there"),
        (tmp_path / "a_file" / "out", "a_file is a file, not a directory"),
    ):
        assert_one_line_error(run_cli("export", checkpoint, "-o", bad), text, warnings=True)
    assert (tmp_path / "a_file").read_text() == "x"


# ---------------------------------------------------------------------------------------- 3. demo


def test_demo_reruns_and_is_atomic(demo_dir, tmp_path, monkeypatch):
    again = run_cli("demo", "-o", demo_dir, "--max-new-tokens", 3)
    assert again.exit_code == 0 and "reusing" in again.output, again.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user data")
    assert_one_line_error(run_cli("demo", "-o", mine), "was not made by 'nemotron-deploy demo'", warnings=True)
    assert (mine / "notes.txt").read_text() == "user data"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("nemotron_deploy.exporter.onnx_export.export_artifact", interrupted)
    result = run_cli("demo", "-o", tmp_path / "fresh")
    assert result.exit_code == 130 and "error: interrupted" in result.output
    assert list(tmp_path.iterdir()) == [mine]  # nothing half-made, no private leftovers


# ---------------------------------------------------------------------------------------- 4. install


def test_building_the_package_prints_no_warnings(tmp_path):
    from pathlib import Path

    repo = Path(cli.__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(repo)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


# ---------------------------------------------------------------------------------------- 5. build


def test_build_defaults_to_the_artifacts_engine_and_needs_a_target_gpu(artifacts):
    _, _, ort_artifact = artifacts("hybrid_moe_groups")
    assert_one_line_error(
        run_cli("build", ort_artifact), "re-export with --target tensorrt (plugins) or --target tensorrt-rtx", warnings=True
    )
    _, _, rtx_artifact = artifacts("hybrid_moe_groups", target="tensorrt-rtx")
    if not cli_gpu():
        assert_one_line_error(run_cli("build", rtx_artifact), "no CUDA GPU here: give --compute-capability (e.g. 86)", warnings=True)
    bad = run_cli("build", rtx_artifact, "--compute-capability", "95")
    assert_one_line_error(bad, "--compute-capability 95: tensorrt-rtx", warnings=True)
    listed = bad.output.split("builds for ")[1].strip().split(", ")
    assert listed == sorted(listed, key=lambda c: int(c[2:])) and "SM86" in listed
    assert "parsing" not in bad.output


def cli_gpu() -> int:
    from nemotron_deploy.exporter.engine_build import gpu_count

    return gpu_count()


# ---------------------------------------------------------------------------------------- 6. API


def test_sampling_parameters_imply_sampling_and_generation_has_text(demo_dir):
    assert Sampling().greedy and not Sampling(top_p=0.9, temperature=0.7).greedy and not Sampling(top_k=5).greedy
    assert Sampling(greedy=True, temperature=0.5).greedy
    logits = np.random.default_rng(0).standard_normal((64, 50)).astype(np.float32)
    draws = Sampler(Sampling(temperature=2.0, seed=0))(logits)
    assert (draws != logits.argmax(-1)).any()  # sampled, not silently greedy
    with pytest.raises(Exception, match=r"^temperature 0: expected a number > 0"):
        Sampling(temperature=0)
    session = Session(demo_dir / "onnx")
    result = session.generate(["Mamba layers"], 4, ignore_eos=True)
    assert result.text == [session.decode(result.new_token_ids[0])]


# ---------------------------------------------------------------------------------------- 7. generate


def test_generate_output_forms(demo_dir, tmp_path):
    artifact = demo_dir / "onnx"
    several = run_cli("generate", artifact, "--prompt", "The runtime", "--prompt", "Mamba", "--max-new-tokens", 4, "--ignore-eos")
    lines = several.output.splitlines()
    assert several.exit_code == 0 and len(lines) == 2 and lines[0].startswith('[0] "') and lines[1].startswith('[1] "')
    texts = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert_one_line_error(
        run_cli("generate", artifact, "--prompt", "a", "--prompt", "b", "--stream"),
        "for several prompts use --stream --json",
        warnings=True,
    )
    streamed = run_cli(
        "generate", artifact, "--prompt", "The runtime", "--prompt", "Mamba", "--max-new-tokens", 4, "--ignore-eos", "--stream", "--json"
    )
    records = [json.loads(line) for line in streamed.output.splitlines()]
    assert [r["prompt"] for r in records[:-1]] == [0, 1] * 4 and records[-1]["text"] == texts
    assert_one_line_error(
        run_cli("generate", artifact, "--prompt-ids", "1,,2"), "--prompt-ids '1,,2': expected comma-separated integers", warnings=True
    )
    limit = json.loads((artifact / MANIFEST_FILE).read_text())["model"]["max_position_embeddings"]
    long = run_cli("generate", artifact, "--prompt-ids", ",".join(["5"] * (limit - 3)), "--max-new-tokens", 5000, "--ignore-eos")
    assert long.exit_code == 0 and f"note: prompt 0 stopped after 3 new tokens at the model's maximum of {limit} tokens" in long.output
    copy = shutil.copytree(artifact, tmp_path / "no-tokenizer")
    (copy / "tokenizer.json").unlink()
    ids = run_cli("generate", copy, "--prompt-ids", "5,6,7", "--max-new-tokens", 3)
    assert ids.exit_code == 0 and "tokenizer.json: missing; token-id prompts work" in ids.output
    assert_one_line_error(run_cli("generate", copy, "--prompt", "hello"), "text prompts need a tokenizer", warnings=True)


# ---------------------------------------------------------------------------------------- 8. bench


def test_bench_peak_memory_is_the_models(artifacts):
    _, _, artifact = artifacts("hybrid_moe_groups")
    code = "from nemotron_deploy.runtime.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "bench", str(artifact), "--prompt-len", "8", "--new-tokens", "2", "--json"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    # 2 x 512 MiB of bandwidth-test buffers used to be counted in; the model and onnxruntime need ~100 MiB
    assert json.loads(done.stdout)["peak_rss_mb"] < 600


# ---------------------------------------------------------------------------------------- 9. Ctrl-C, styles


def test_interrupt_usage_errors_and_help(artifacts, monkeypatch):
    _, _, artifact = artifacts("hybrid_moe_groups")
    assert_one_line_error(
        run_cli("generate", artifact, "--prompt-ids", "5", "--max-new-tokens", "many"),
        "Invalid value for '--max-new-tokens'",
        warnings=True,
    )
    assert_one_line_error(run_cli("export", artifact, "-o", "x", "--target", "openvino"), "Invalid value for '--target'", warnings=True)
    help_text = " ".join(run_cli("generate", "--help").output.split())  # click wraps the lines
    assert "Sampling temperature" in help_text and "most likely tokens whose mass reaches p" in help_text

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "generate", interrupted)
    result = run_cli("generate", artifact, "--prompt-ids", "5")
    assert result.exit_code == 130 and result.output.strip() == "error: interrupted"


# ---------------------------------------------------------------------------------------- 10. integrity


def test_same_size_corruption_is_found_by_verify(artifacts, tmp_path):
    _, _, artifact = artifacts("hybrid_moe_groups")
    copy = shutil.copytree(artifact, tmp_path / "a")
    ok = run_cli("verify", copy)
    assert ok.exit_code == 0 and ok.output.startswith("ok: ") and "files match" in ok.output
    with open(copy / "weights.data", "r+b") as f:
        f.seek(4096)
        f.write(bytes(100))
    assert run_cli("generate", copy, "--prompt-ids", "5,6", "--max-new-tokens", 2).exit_code == 0  # sizes only: fast
    assert_one_line_error(run_cli("verify", copy), "weights.data: SHA-256 differs from the one manifest.json records", warnings=True)
    assert_one_line_error(run_cli("generate", copy, "--prompt-ids", "5,6", "--verify"), "weights.data: SHA-256 differs", warnings=True)
    with pytest.raises(Exception, match="SHA-256 differs"):
        Session(copy, verify=True)


# ---------------------------------------------------------------------------------------- 11. manifest


def test_damaged_manifest_fields_are_one_line_errors(artifacts, tmp_path):
    _, _, artifact = artifacts("latent_moe_tied_odd")
    failures = 0
    for what, copy, raw in damaged_copies(artifact, tmp_path, 0, 60):
        result = run_cli("generate", copy, "--prompt-ids", "5,6,7", "--max-new-tokens", 2)
        assert result.exception is None or isinstance(result.exception, SystemExit), f"{what}: {result.exception!r}"
        assert result.exit_code in (0, 2), f"{what}: {result.output}"
        if result.exit_code == 2:
            failures += 1
            assert_one_line_error(result, "", warnings=True)
    assert failures >= 10  # most fields matter; each failure named its field in one line
    shortened = json.loads(json.dumps(raw))
    shortened["states"][1]["shape"] = shortened["states"][1]["shape"][:-1]
    (copy / MANIFEST_FILE).write_text(json.dumps(shortened))
    assert_one_line_error(run_cli("generate", copy, "--prompt-ids", "5"), f"state '{raw['states'][1]['name']}' has shape", warnings=True)
