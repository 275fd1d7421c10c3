"""What many tests share: the command line run in-process, its one-line errors, relative error, and the
pre-packed cache's builder run with its peak memory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from nemotron_deploy.runtime.cli import main

# Widths small enough that a checkpoint's graphs trace in seconds (with TINY_CONFIG's other fields).
SMALL_WIDTHS = dict(
    vocab_size=64,
    hidden_size=32,
    mamba_num_heads=2,
    n_groups=1,
    ssm_state_size=8,
    chunk_size=8,
    num_attention_heads=2,
    head_dim=16,
    moe_intermediate_size=16,
    moe_shared_expert_intermediate_size=16,
)


def run_cli(*args) -> Result:
    """`nemotron-deploy ARGS...` in this process (arguments converted to strings)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, text: str, code: int = 2, warnings: bool = False) -> None:
    """The command failed with exit status `code` and said why in one `error: ...` line holding `text`;
    with `warnings`, `warning: ...` lines may precede it."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if not (warnings and line.startswith("warning: "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert text in lines[0], result.output


def relative_error(got, want) -> float:
    """max |got - want| / max |want|, in float64 (numpy arrays or torch tensors, on the CPU)."""
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    return float((got - want).abs().max() / want.abs().max())


def build_entry(graph: Path, out: Path, *flags: str) -> int:
    """The cache entry's builder (`python -m nemotron_deploy.runtime.onnx_prepacked GRAPH OUT FLAGS`) in a
    child process into `out`; returns its peak anonymous memory (MiB, sampled every 2 ms)."""
    out.mkdir()
    cmd = [sys.executable, "-m", "nemotron_deploy.runtime.onnx_prepacked", str(graph), str(out), *flags]
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    peak = 0
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            peak = max(peak, int(next(line for line in status.splitlines() if line.startswith("RssAnon")).split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.002)
    assert child.returncode == 0, child.stderr.read().decode()[-2000:]
    return peak // 1024
