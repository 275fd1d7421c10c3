"""The checkpoint's tokenizer (tokenizer.json, through the `tokenizers` library)."""

from __future__ import annotations

from pathlib import Path

from nemotron_deploy.runtime.errors import NemotronDeployError


class Tokenizer:
    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise NemotronDeployError("text prompts need the 'tokenizers' package: pip install 'nemotron-deploy[onnxruntime]'") from None
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise NemotronDeployError(f"{path}: cannot read the tokenizer ({e})") from None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
