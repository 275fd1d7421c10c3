"""Another revision of nemotron_deploy, runnable side by side with this tree in one benchmark run."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path


def baseline_env(work: Path, rev: str) -> dict:
    """An environment whose PYTHONPATH puts `rev`'s nemotron_deploy first (extracted with git archive)."""
    src = work / f"baseline-{rev}"
    if src.exists():  # extracted earlier in this run
        return dict(os.environ, PYTHONPATH=str(src))
    src.mkdir()
    archive = subprocess.run(["git", "archive", rev, "exporter", "runtime", "plugins"], capture_output=True, check=True).stdout
    tar_path = work / "baseline.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(src / "nemotron_deploy", filter="data")
    tar_path.unlink()
    return dict(os.environ, PYTHONPATH=str(src))
