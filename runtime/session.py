"""A session over an artifact directory: reads the manifest, opens the backend and the tokenizer,
owns nothing but configuration (states live inside each `generate` call)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from nemotron_deploy.runtime import decode, snapshot
from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import read_manifest
from nemotron_deploy.runtime.backends import open_backend
from nemotron_deploy.runtime.chat_template import TEMPLATE_FILE, TOKENIZER_CONFIG, ChatTemplate
from nemotron_deploy.runtime.sampling import Sampling
from nemotron_deploy.runtime.stop_text import StopText
from nemotron_deploy.runtime.tokenizer import Tokenizer


class Session:
    def __init__(
        self,
        artifact_dir: str | Path,
        backend: str = "onnxruntime",
        providers: list[str] | None = None,
        threads: int | None = None,
        engine: str | None = None,
        plugins: str | Path | None = None,
        verify: bool = False,
        cache=None,
    ):
        """verify: check every file's SHA-256 against the manifest first (reads the whole artifact).
        cache: onnxruntime's pre-packed weights cache for quantized artifacts
        (`runtime.onnx_prepacked.CachePolicy`; default: on, beside the artifact or in the user's cache)."""
        self.manifest = read_manifest(artifact_dir)
        if verify:
            from nemotron_deploy.runtime.artifact.integrity import verify_artifact

            verify_artifact(self.manifest)
        self.backend = open_backend(self.manifest, backend, providers, threads, engine=engine, plugins=plugins, cache=cache)
        tok = self.manifest.tokenizer_file
        if tok is not None and not tok.is_file():
            warnings.warn(f"{tok}: missing; token-id prompts work, text prompts and decoded text do not", stacklevel=2)
            tok = None
        self.tokenizer = Tokenizer(tok) if tok else None
        self._chat_template: ChatTemplate | None = None
        self.model_id = snapshot.model_identity(self.manifest)
        model = self.manifest.model
        self.vocab_size = model.vocab_size
        self.max_length = model.max_position_embeddings

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise NemotronDeployError(
                f"{self.manifest.path}: text prompts need a tokenizer, and this artifact has no tokenizer.json (use token ids)"
            )
        return self.tokenizer.encode(text)

    @property
    def chat_template(self) -> ChatTemplate:
        """The artifact's chat template (runtime/chat_template.py); refuses, in one line, when it has none."""
        if self._chat_template is None:
            template = ChatTemplate.of(self.manifest.path)
            if template is None:
                raise NemotronDeployError(
                    f"{self.manifest.path}: no chat template (no {TEMPLATE_FILE}, no chat_template in {TOKENIZER_CONFIG}): "
                    "chat needs one; plain text prompts still work"
                )
            self._chat_template = template
        return self._chat_template

    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True, **template_kwargs) -> list[int]:
        """The token ids of `messages` rendered with the chat template (template_kwargs: what else it
        reads, e.g. enable_thinking): the text tokenized without special tokens, as transformers'
        `apply_chat_template(..., tokenize=True)` does."""
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)
        if self.tokenizer is None:
            raise NemotronDeployError(f"{self.manifest.path}: chat needs a tokenizer, and this artifact has no tokenizer.json")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(
        self,
        messages: Sequence[dict],
        max_new_tokens: int = 64,
        sampling: Sampling = Sampling(),
        *,
        chat_template_kwargs: dict | None = None,
        **generate_options,
    ) -> decode.Generation:
        """Generate the assistant's reply to one conversation ([{"role", "content"}, ...]); the other
        options as `generate` takes them (stop, ignore_eos, on_token, on_text, ...)."""
        prompt = self.chat_prompt(messages, **(chat_template_kwargs or {}))
        return self.generate([prompt], max_new_tokens, sampling, **generate_options)

    def decode(self, ids: Sequence[int]) -> str | None:
        return self.tokenizer.decode(list(ids)) if self.tokenizer else None

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        max_new_tokens: int = 64,
        sampling: Sampling = Sampling(),
        ignore_eos: bool = False,
        prefill_chunk_size: int | None = None,
        on_token: Callable[[int, int], None] | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[int, str], None] | None = None,
        start: snapshot.StateSnapshot | Sequence[snapshot.StateSnapshot | None] | None = None,
    ) -> decode.Generation:
        """Prompts are text (tokenized) or token-id lists, mixed freely; one left-padded batch.

        stop: strings that end a sequence where they appear in its text (finish reason "stop"; the text
        ends before it). on_text(row, piece): the new text after every token (`decode.generate`).
        start: a snapshot (`snapshot`, `load_state`) to continue from, or one (or None) per prompt: its
        tokens must begin the prompt, and only the rest is prefilled (a rest of exactly one token runs
        as a decode step, as one new token after a past does in transformers)."""
        ids = [self.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        starts = [start] if isinstance(start, snapshot.StateSnapshot) else start
        if starts is not None:
            decode.check_starts(ids, starts, self.model_id)
        texts = None
        if stop or on_text:
            if self.tokenizer is None:
                raise NemotronDeployError(
                    f"{self.manifest.path}: stop strings and streamed text need a tokenizer, and this artifact has no tokenizer.json"
                )
            texts = [StopText(self.tokenizer, stop) for _ in ids]
        decode.check_prompts(ids, self.vocab_size, self.max_length)
        if max_new_tokens < 1:
            raise NemotronDeployError(f"max_new_tokens {max_new_tokens}: expected >= 1")
        if prefill_chunk_size is not None and prefill_chunk_size < 1:
            raise NemotronDeployError(f"prefill chunk size {prefill_chunk_size}: expected >= 1")
        gen = self.manifest.generation
        result = decode.generate(
            self.backend,
            ids,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_token_ids=() if ignore_eos else gen.eos_token_ids,
            pad_token_id=gen.pad_token_id or 0,
            max_length=self.max_length,
            prefill_chunk_size=prefill_chunk_size,
            on_token=on_token,
            texts=texts,
            on_text=on_text,
            starts=starts,
        )
        if self.tokenizer is not None:  # a stopped sequence's text ends before its stop string
            result.text = [texts[i].text if texts and texts[i].stopped else self.decode(ids) for i, ids in enumerate(result.new_token_ids)]
        return result

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(
        self, prompt: str | Sequence[int], prefill_chunk_size: int | None = None, start: snapshot.StateSnapshot | None = None
    ) -> snapshot.StateSnapshot:
        """Prefill one prompt (text or ids; from `start`, a snapshot of its first tokens, if given) and
        return the state after its last token, on the host: `generate(..., start=it)` continues from
        it, `save_state` writes it."""
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        decode.check_prompts([ids], self.vocab_size, self.max_length)
        if start is not None:
            decode.check_starts([ids], [start], self.model_id)
        logits, state, mask = decode.prefill_rows(self.backend, [ids], 0, prefill_chunk_size, [start])
        return snapshot.take(state, mask, 0, ids, logits[0], self.model_id, snapshot.kv_names(self.manifest.states))

    def save_state(self, state: snapshot.StateSnapshot, path: str | Path) -> Path:
        """Write a snapshot of this artifact's model to `path` (safetensors), atomically."""
        if state.model != self.model_id:
            raise snapshot.SnapshotError(f"{path}: the snapshot is of another model or artifact than {self.manifest.path}")
        return state.save(path)

    def load_state(self, path: str | Path) -> snapshot.StateSnapshot:
        """Read a snapshot file written by `save_state`, checked against this artifact (SnapshotError)."""
        return snapshot.load(path, self.manifest)
