"""The OpenAI-compatible HTTP endpoints: a thin ASGI app (FastAPI) in front of Triton's `generate` model.

    GET  /health                ok when Triton is ready
    GET  /v1/models             the one served model
    POST /v1/completions        text or token-id prompt
    POST /v1/chat/completions   messages, rendered with the checkpoint's chat template

Triton stays the engine: each request is tokenized here (its chat template rendered) and streamed
through the generate model over gRPC (runtime/serving/openai_api/triton_stream.py), which batches it with the
others and applies sampling, penalties and stop strings. Streaming answers are server-sent events ending
with `data: [DONE]`. Bad requests get the API's error object (runtime/serving/openai_api/protocol.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request  # the triton extra; module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse

from nemotron_deploy.runtime.serving.openai_api.protocol import ApiError, ModelInfo, Plan, chat_plan, completion_plan
from nemotron_deploy.runtime.serving.openai_api.triton_stream import Piece, generate

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # the generate model's -> the API's


def model_info(artifact_dir, name: str) -> ModelInfo:
    """What the endpoints serve of an artifact: its tokenizer, chat template and generation defaults."""
    from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
    from nemotron_deploy.runtime.artifact.manifest import read_manifest
    from nemotron_deploy.runtime.chat_template import ChatTemplate
    from nemotron_deploy.runtime.tokenizer import Tokenizer

    manifest = read_manifest(artifact_dir)
    tok = manifest.tokenizer_file
    if tok is None or not tok.is_file():
        raise NemotronDeployError(
            f"{manifest.path}: the OpenAI endpoints need the artifact's tokenizer.json (text in, text out), and it has none"
        )
    gen = manifest.generation
    return ModelInfo(
        name=name,
        vocab_size=manifest.model.vocab_size,
        max_length=manifest.model.max_position_embeddings,
        tokenizer=Tokenizer(tok),
        chat_template=ChatTemplate.of(manifest.path),
        greedy_default=gen.do_sample is False,
        temperature_default=gen.temperature,
        top_p_default=gen.top_p,
        top_k_default=gen.top_k,
    )


def create_app(model: ModelInfo, grpc_url: str):
    """The ASGI app for `model`, forwarding to the Triton server at `grpc_url` (host:port)."""
    app = FastAPI(title="nemotron-deploy OpenAI-compatible endpoints", docs_url=None, redoc_url=None)
    state = {}

    def client():
        if "client" not in state:  # made in the server's event loop
            import tritonclient.grpc.aio as grpcclient

            state["client"] = grpcclient.InferenceServerClient(grpc_url)
        return state["client"]

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health():
        try:
            ready = await client().is_server_ready()
        except Exception:
            ready = False
        return JSONResponse({"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model.name, "object": "model", "created": int(time.time()), "owned_by": "nemotron-deploy"}],
        }

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    @app.post("/v1/completions")
    async def completions(request: Request):
        plan = completion_plan(await body_of(request), model)
        return await answer(plan, _Completion(model.name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        plan = chat_plan(await body_of(request), model)
        return await answer(plan, _ChatCompletion(model.name))

    async def answer(plan: Plan, shape):
        pieces = generate(client(), plan)
        if not plan.stream:
            text, tokens, reason = [], 0, None
            async for piece in pieces:
                text.append(piece.text)
                tokens += piece.tokens
                reason = piece.finish_reason or reason
            return shape.whole("".join(text), FINISH_REASONS.get(reason, "stop"), _usage(plan, tokens))
        first = await _first(pieces)  # an error before any token is still an HTTP error, not a broken stream
        return StreamingResponse(_events(shape, plan, first, pieces), media_type="text/event-stream")

    return app


async def _first(pieces: AsyncIterator[Piece]) -> Piece | None:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None


async def _events(shape, plan: Plan, first: Piece | None, pieces: AsyncIterator[Piece]):
    """The server-sent events of one streamed answer. Closing it (the client went away) closes `pieces`,
    which cancels the request in Triton."""
    tokens = 0
    try:
        yield _event(shape.opening())
        piece = first
        while piece is not None:
            tokens += piece.tokens
            reason = FINISH_REASONS.get(piece.finish_reason) if piece.finish_reason else None
            if piece.text or reason:
                yield _event(shape.chunk(piece.text, reason))
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                piece = None
        if plan.include_usage:
            yield _event(shape.usage_chunk(_usage(plan, tokens)))
    except ApiError as e:
        yield _event(e.body())
    finally:
        await pieces.aclose()
    yield "data: [DONE]\n\n"


def _event(payload: dict | None) -> str:
    return "" if payload is None else f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(plan: Plan, completion_tokens: int) -> dict:
    prompt = len(plan.prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


class _Completion:
    """/v1/completions' response objects."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model

    def _head(self, obj: str = "text_completion") -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, reason: str, usage: dict) -> dict:
        return {**self._head(), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}], "usage": usage}

    def opening(self) -> dict | None:
        return None

    def chunk(self, text: str, reason: str | None) -> dict:
        return {**self._head(), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head(), "choices": [], "usage": usage}


class _ChatCompletion(_Completion):
    """/v1/chat/completions' response objects."""

    def __init__(self, model: str):
        super().__init__(model)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"

    def whole(self, text: str, reason: str, usage: dict) -> dict:
        message = {"role": "assistant", "content": text}
        return {
            **self._head("chat.completion"),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
            "usage": usage,
        }

    def opening(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def chunk(self, text: str, reason: str | None) -> dict:
        return self._chunk({"content": text} if text else {}, reason)

    def _chunk(self, delta: dict, reason: str | None) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage}
