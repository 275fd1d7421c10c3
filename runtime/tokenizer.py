"""The checkpoint's tokenizer (tokenizer.json, through the `tokenizers` library)."""

from __future__ import annotations

from pathlib import Path

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError


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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """add_special_tokens=False: no BOS / EOS from the tokenizer's post-processor (a chat template's
        text writes its own)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


class TextStream:
    """The text of a growing token sequence, piece by piece, for streaming.

    Decoding each token alone loses what depends on its neighbours (a SentencePiece word's leading
    space, a character split over byte tokens), and decoding everything each time costs O(n) per
    token. So each step decodes a short window: the tokens since the last piece plus the ones before
    it as context, and holds text back while it ends in an incomplete character.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._context = 0  # window start: tokens already shown, kept as context
        self._shown = 0  # tokens whose text has been returned

    def push(self, token: int) -> str:
        """The new text once `token` is appended ("" while a character is incomplete)."""
        self.ids.append(token)
        return self._piece(final=False)

    def flush(self) -> str:
        """Whatever was held back (at the end of the sequence)."""
        return self._piece(final=True)

    def _piece(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self._context : self._shown])
        after = self.tokenizer.decode(self.ids[self._context :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self._context, self._shown = self._shown, len(self.ids)
        return after[len(before) :]
