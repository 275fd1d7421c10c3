"""Per-file SHA-256 of an artifact: recorded by `export` / `build`, checked by `verify` (and `--verify`).

Opening an artifact checks only file sizes (instant); a same-size corruption, e.g. bytes overwritten
while copying an artifact between machines, is found by hashing every file against the manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE, ArtifactError, FileRecord, Manifest

_CHUNK = 16 * 2**20


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 16 MiB chunks; `on_bytes(n)` after each (progress)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def file_records(
    folder: Path, names, on_bytes: Callable[[int], None] | None = None, known: dict[str, str] | None = None
) -> tuple[FileRecord, ...]:
    """The manifest's `files` / `side_files` entries of files in `folder`; `known`: SHA-256s already
    computed (as a file was written), not read again."""
    known = known or {}
    return tuple(FileRecord(n, (folder / n).stat().st_size, known.get(n) or file_sha256(folder / n, on_bytes)) for n in names)


def verify_artifact(manifest: Manifest, on_bytes: Callable[[int], None] | None = None) -> int:
    """Hash every file the manifest records (required files, and side files that are present) and
    compare. Returns the number of files checked; raises ArtifactError naming the first that differs."""
    checked = 0
    for entry, needed in _entries(manifest):
        path = manifest.path / entry.name
        if not path.is_file():
            if needed:
                raise ArtifactError(f"{path}: missing (listed in {MANIFEST_FILE})")
            continue
        if entry.sha256 is None:
            raise ArtifactError(
                f"{manifest.path / MANIFEST_FILE}: no SHA-256 recorded for {entry.name} (exported by an older nemotron-deploy; re-export to verify)"
            )
        if path.stat().st_size != entry.bytes:
            raise ArtifactError(f"{path}: {path.stat().st_size} bytes, {MANIFEST_FILE} records {entry.bytes} (truncated or replaced)")
        if file_sha256(path, on_bytes) != entry.sha256:
            raise ArtifactError(f"{path}: SHA-256 differs from the one {MANIFEST_FILE} records: the file is corrupted or was replaced")
        checked += 1
    return checked


def bytes_to_verify(manifest: Manifest) -> int:
    return sum(e.bytes for e, _ in _entries(manifest) if (manifest.path / e.name).is_file())


def _entries(manifest: Manifest) -> list[tuple[FileRecord, bool]]:
    """(file record, required?): the manifest's `files`, then its optional `side_files`."""
    return [(e, True) for e in manifest.files] + [(e, False) for e in manifest.side_files]
