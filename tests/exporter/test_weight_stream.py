"""weights.data as WeightsFile writes it: each distinct content once, every tensor's own bytes at its
offset, and the SHA-256 computed while writing equal to the file's own."""

import hashlib

import torch

from nemotron_deploy.exporter import weight_stream
from nemotron_deploy.exporter.weight_spec import WeightSpec
from nemotron_deploy.exporter.weight_stream import ALIGN, WeightsFile


class _Tensors(WeightsFile):
    """A WeightsFile whose specs name tensors given here (in blocks of `rows` rows), not checkpoint ones."""

    def __init__(self, path, tensors: dict, rows: int):
        super().__init__(path, ckpt=None)
        self.tensors, self.rows = tensors, rows

    def _blocks(self, spec):
        full = self.tensors[spec.param]
        return (full[i : i + self.rows].contiguous() for i in range(0, full.shape[0], self.rows))


def test_equal_content_is_stored_once_and_a_shared_fingerprint_is_not_merged(tmp_path):
    sample_rows = weight_stream._SAMPLE_BYTES // (4 * 64)
    base = torch.randn(3 * sample_rows, 64)
    late = base.clone()
    late[-1, -1] += 1  # same length and leading bytes (the fingerprint) as `base`, other content
    tensors = {
        "a": base,
        "tied": base.clone(),
        "late": late,
        "ones": torch.ones(sample_rows // 4, 64),
        "ones2": torch.ones(sample_rows // 4, 64),
    }
    weights = _Tensors(tmp_path / "weights.data", tensors, rows=sample_rows // 2)  # several blocks per tensor
    ranges = {name: weights.add(WeightSpec(name, "float32")) for name in tensors}
    weights.close()

    assert ranges["tied"] == ranges["a"] and ranges["ones2"] == ranges["ones"]
    assert ranges["late"] != ranges["a"]
    data = (tmp_path / "weights.data").read_bytes()
    for name, (offset, length) in ranges.items():
        assert offset % ALIGN == 0
        assert data[offset : offset + length] == tensors[name].numpy().tobytes(), name
    stored = {ranges[n] for n in ("a", "late", "ones")}
    assert len(data) == max(o + n for o, n in stored) and len(data) < sum(n for _, n in stored) + 3 * ALIGN
    assert weights.sha256 == hashlib.sha256(data).hexdigest()  # de-duplicated tensors are never written


def test_a_spec_seen_before_is_not_streamed_again(tmp_path):
    tensors = {"w": torch.randn(40, 16)}
    weights = _Tensors(tmp_path / "weights.data", tensors, rows=7)
    first = weights.add(WeightSpec("w", "float32"))
    streamed = weights.written
    assert weights.add(WeightSpec("w", "float32")) == first and weights.written == streamed
    weights.close()
    assert (tmp_path / "weights.data").read_bytes()[first[0] :] == tensors["w"].numpy().tobytes()
