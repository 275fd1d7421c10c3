"""New output directories that appear whole or not at all.

Everything is written into a hidden staging directory next to the output (same filesystem) and
renamed into place only when complete, so an interrupted command leaves nothing that looks like
a result, and an existing directory is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nemotron_deploy.runtime.errors import NemotronDeployError


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


def publish(staging: Path, out: str | Path) -> Path:
    """Give the staging directory normal permissions (mkdtemp made it private) and rename it to `out`."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staging, 0o777 & ~mask)
    os.replace(staging, out)
    return Path(out)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
