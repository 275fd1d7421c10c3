"""On a lent GPU with TensorRT (called by .ci/gpu_check): the C++ example's greedy tokens against
`nemotron-deploy generate --backend tensorrt` and the onnxruntime artifact's, on the test checkpoints,
and decode tokens/s of the C++ runtime against the Python TensorRT backend; the TensorRT backend
continuing from a saved state snapshot against its own tokens from the start. Prints one JSON object;
exits 0 with {"skipped": reason} where TensorRT (the Python package) is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def cli(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "nemotron_deploy.runtime.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nemotron-deploy {' '.join(map(str, args))}: {done.stderr[-2000:]}")
    return done.stdout


def tokens(*args) -> list[int]:
    return json.loads(cli("generate", *args, "--json"))["new_token_ids"][0]


def main() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "no tensorrt Python package on this machine: engines cannot be built"}))
        return
    from hf_oracle import CONFIGS, make_checkpoint

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plugins = json.loads(cli("plugins", "build", "-o", work / "plugins", "--json"))["library"]
        cpp = json.loads(cli("cpp", "build", "-o", work / "cpp", "--json"))
        prompt, n = "5,17,3,99,42,8", 24
        for name in sorted(CONFIGS):
            _, ckpt = make_checkpoint(name, work / name)
            ort, trt = work / f"{name}-ort", work / f"{name}-trt"
            cli("export", ckpt, "-o", ort)
            cli("export", ckpt, "-o", trt, "--target", "tensorrt")
            cli("build", trt, "--plugins", plugins)
            expected = tokens(ort, "--prompt-ids", prompt, "--max-new-tokens", n, "--ignore-eos")
            python_trt = tokens(
                trt, "--prompt-ids", prompt, "--max-new-tokens", n, "--ignore-eos", "--backend", "tensorrt", "--plugins", plugins
            )
            start = time.perf_counter()
            done = subprocess.run(
                [
                    cpp["example"],
                    "--artifact",
                    trt,
                    "--prompt-ids",
                    prompt,
                    "--max-new-tokens",
                    str(n),
                    "--ignore-eos",
                    "--greedy",
                    "--plugins",
                    plugins,
                ],
                capture_output=True,
                text=True,
            )
            cpp_seconds = time.perf_counter() - start
            cpp_tokens = [int(t) for t in done.stdout.strip().split(",")] if done.returncode == 0 else done.stderr.strip()
            bench = json.loads(
                cli("bench", trt, "--backend", "tensorrt", "--plugins", plugins, "--prompt-len", 6, "--new-tokens", n, "--json")
            )
            results[name] = {
                "onnxruntime": expected,
                "python_tensorrt": python_trt,
                "cpp": cpp_tokens,
                "cpp_equals_python_tensorrt": cpp_tokens == python_trt,
                "cpp_equals_onnxruntime": cpp_tokens == expected,
                "cpp_wall_seconds_incl_load": cpp_seconds,
                "python_tensorrt_decode_tokens_per_s": bench["decode_tokens_per_s"],
                "snapshot_resume_equals_python_tensorrt": resumed_from_snapshot(trt, plugins, prompt, n, work) == python_trt,
            }
    print(json.dumps(results, indent=2))
    ok = all(r["cpp_equals_python_tensorrt"] and r["snapshot_resume_equals_python_tensorrt"] for r in results.values())
    sys.exit(0 if ok else 1)


def resumed_from_snapshot(artifact: Path, plugins: str, prompt: str, n: int, work: Path) -> list[int]:
    """Greedy tokens of the prompt continued on the TensorRT backend from a snapshot of its first 3
    tokens (device states copied to the host, saved, loaded, restored to the device: runtime/snapshot.py)."""
    from nemotron_deploy.runtime.session import Session

    session = Session(artifact, backend="tensorrt", plugins=plugins)
    ids = [int(t) for t in prompt.split(",")]
    path = session.save_state(session.snapshot(ids[:3]), work / f"{artifact.name}-state.safetensors")
    return session.generate([ids], n, ignore_eos=True, start=session.load_state(path)).new_token_ids[0]


if __name__ == "__main__":
    main()
