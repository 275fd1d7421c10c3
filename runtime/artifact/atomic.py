"""Outputs that appear whole or not at all: new directories, new or replaced files.

Everything is written under a hidden temporary name next to the output (same filesystem) and renamed
into place only when complete, so an interrupted command leaves nothing that looks like a result, and
an existing output is only ever replaced by a complete one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError


def staging_dir(out: str | Path) -> Path:
    """Check that `out` can be created (it must not exist) and create its hidden staging directory.

    Called before any heavy work, so a bad path is one line up front. Raises NemotronDeployError.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise NemotronDeployError(f"{out}: already exists; choose a new output directory (nothing was overwritten)")
    return make_staging(out)


def make_staging(out: Path) -> Path:
    """The hidden staging directory for `out` (which may exist, for a caller that replaces its own output)."""
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NemotronDeployError(f"{out}: cannot create it: {ancestor} is a file, not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        raise NemotronDeployError(f"{out}: cannot create a directory there ({e.strerror})") from None


@contextlib.contextmanager
def new_directory(out: str | Path, staging: Path | None = None) -> Iterator[Path]:
    """Yields the staging directory of `out` (default: `staging_dir(out)`); renamed to `out` when the
    block succeeds, deleted when it fails."""
    staging = staging or staging_dir(out)
    try:
        yield staging
        mask = os.umask(0)  # mkdtemp made the directory private: give it the usual permissions
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def new_files(*paths: Path) -> Iterator[list[Path]]:
    """Yields a temporary path next to each of `paths`; all are renamed onto `paths` together when the
    block succeeds (each file whole, and all of them or none), deleted when it fails."""
    temporary = [Path(p).with_name(f".{Path(p).name}.{os.getpid()}.partial") for p in paths]
    try:
        yield temporary
        for tmp, path in zip(temporary, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)


def write_file(path: Path, data: bytes) -> Path:
    with new_files(path) as (tmp,):
        tmp.write_bytes(data)
    return path


def copy_file(src: Path, dst: Path) -> Path:
    with new_files(dst) as (tmp,):
        shutil.copy2(src, tmp)
    return dst
