"""AppendFile: the same bytes whether written with O_DIRECT or buffered (a filesystem that refuses
O_DIRECT, at open or at the first write), readable by path mid-way, cut to its length at close."""

import errno
import os

import numpy as np
import pytest

from nemotron_deploy.exporter import append_file
from nemotron_deploy.exporter.append_file import AppendFile


def _pieces(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)  # lengths around and across the chunk and alignment boundaries
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 4095, 4096, 4097, 3 * 4096, 9000, 0, 12289, 5)]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(append_file, "_CHUNK", 3 * 4096)  # many chunk boundaries in a few KiB


@pytest.mark.parametrize("direct", [True, False])
def test_appended_bytes_read_back_midway_and_after_close(tmp_path, small_chunks, direct):
    pieces, path = _pieces(0), tmp_path / "weights.data"
    file = AppendFile(path, direct=direct)
    assert file.direct == direct  # this machine's /tmp takes O_DIRECT
    for i, piece in enumerate(pieces):
        file.write(piece)
        if i in (1, 3, 5):  # a partial chunk written padded, then overwritten by later appends
            file.make_readable()
            assert path.read_bytes()[: file.length] == b"".join(pieces[: i + 1])
    file.close()
    assert path.read_bytes() == b"".join(pieces) and file.length == len(path.read_bytes())


def _refuse_direct(monkeypatch, where: str):
    real_open, real_pwrite, direct_fds = os.open, os.pwrite, set()

    def fake_open(path, flags, *args):
        if flags & os.O_DIRECT and where == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(append_file.os, "open", fake_open)
    monkeypatch.setattr(append_file.os, "pwrite", fake_pwrite)


@pytest.mark.parametrize("where", ["open", "first write"])
def test_a_filesystem_refusing_o_direct_gets_buffered_writes(tmp_path, small_chunks, monkeypatch, where):
    _refuse_direct(monkeypatch, where)
    path = tmp_path / "weights.data"
    file = AppendFile(path)
    assert not file.direct
    for piece in _pieces(1):
        file.write(piece)
    file.close()
    assert path.read_bytes() == b"".join(_pieces(1))


def test_a_write_error_other_than_a_refusal_is_raised(tmp_path, monkeypatch):
    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(append_file.os, "pwrite", no_space)
    with pytest.raises(OSError, match="No space"):
        AppendFile(tmp_path / "weights.data")
