"""exporter/block_kernels.py: weight blocks widened and transposed on onnxruntime's kernels are the bytes
torch makes, and an export through them writes the same weights.data as one through torch alone."""

import pytest
import torch

from nemotron_deploy.exporter import block_kernels
from nemotron_deploy.exporter.onnx_export import export_artifact
from nemotron_deploy.exporter.random_checkpoint import TINY_CONFIG, write_random_checkpoint


def _views(stored: torch.Tensor) -> dict:
    """The blocks WeightSource makes of a stored (out, in) weight: rows, a transpose's rows, one expert."""
    return {
        "rows": stored[3:40],
        "transposed": stored.t(),
        "transposed rows": stored.t()[5:100],
        "one transposed row": stored.t()[7:8],
        "expert": stored[None],
        "transposed expert": stored.t()[None],
    }


@pytest.mark.parametrize("source", [torch.bfloat16, torch.float16, torch.float32])
def test_blocks_are_the_bytes_torch_makes(source):
    stored = (torch.randn(237, 133) * 1e3).to(source)  # odd widths: no kernel's vector width divides them
    stored[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    ran = 0
    for dtype in {torch.float32, source}:
        for name, view in _views(stored).items():
            got = block_kernels.converted(view, dtype)
            if got is None:  # a contiguous block already in `dtype` is torch's (a view, no copy)
                assert view.dtype == dtype and view.is_contiguous(), name
                continue
            ran += 1
            want = view.to(dtype).contiguous()
            assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous(), name
            assert got.view(torch.uint8).flatten().tolist() == want.view(torch.uint8).flatten().tolist(), f"{source} -> {dtype}, {name}"
    assert ran >= 4


def test_narrowing_casts_and_other_layouts_are_left_to_torch():
    stored = torch.randn(64, 48)
    assert block_kernels.converted(stored, torch.float16) is None  # narrowing: torch's rounding, not another's
    assert block_kernels.converted(stored.to(torch.bfloat16), torch.float16) is None
    assert block_kernels.converted(stored[:, ::2], torch.float32) is None  # strided, not a transpose
    assert block_kernels.converted(stored.reshape(4, 16, 48).permute(2, 0, 1), torch.float32) is None


def test_an_export_writes_the_same_weights_through_the_kernels(tmp_path, monkeypatch):
    ckpt = write_random_checkpoint(tmp_path / "ckpt", config=TINY_CONFIG, dtype="bfloat16")
    calls = []
    kernels = block_kernels.converted

    def counted(block, dtype):
        out = kernels(block, dtype)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(block_kernels, "converted", counted)
    fast = export_artifact(ckpt, tmp_path / "fast", progress=False, trace_cache=False)
    assert sum(calls) > 10, "the export never used the kernels"
    monkeypatch.setattr(block_kernels, "converted", lambda block, dtype: None)
    slow = export_artifact(ckpt, tmp_path / "torch", progress=False, trace_cache=False)
    assert (fast / "weights.data").read_bytes() == (slow / "weights.data").read_bytes()
