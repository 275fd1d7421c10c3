"""A sequence's text as its tokens arrive, ended at the first stop string (the OpenAI API's `stop`).

Stop strings are matched on the decoded text, not on tokens: "\\nUser:" may arrive as one token or as
four, and a token may carry a stop string in its middle. So the text is held back while its end could
still begin a stop string ("\\nUs" while "\\nUser:" is one), and released once it cannot; when a stop
string appears, the text before it is the last released, and neither the stop string nor anything after
it is ever emitted. The tokens are kept up to the one that completed the stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

from nemotron_deploy.runtime.tokenizer import TextStream, Tokenizer


class StopText:
    """push(token) -> the text released now ("" while held back); flush() at the end -> the rest.
    `stopped` turns true when a stop string appeared (then push and flush return ""); `piece` is what the
    last push, with any flush after it, released; `text` all that was released."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()):
        self.stream = TextStream(tokenizer)
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.text = ""  # everything released so far
        self.piece = ""
        self.stopped = False

    def push(self, token: int) -> str:
        self.piece = ""
        if not self.stopped:
            self.held += self.stream.push(token)
            self.piece = self._release(final=False)
        return self.piece

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.held += self.stream.flush()
        rest = self._release(final=True)
        self.piece += rest
        return rest

    def _release(self, final: bool) -> str:
        hits = [at for at in (self.held.find(s) for s in self.stops) if at >= 0]
        if hits:
            out, self.held, self.stopped = self.held[: min(hits)], "", True
        else:
            keep = 0 if final else self._open_prefix()
            out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        self.text += out
        return out

    def _open_prefix(self) -> int:
        """Length of the longest end of the held text that begins a stop string (and could grow into it)."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.held)), best, -1):
                if self.held.endswith(stop[:k]):
                    best = k
                    break
        return best
