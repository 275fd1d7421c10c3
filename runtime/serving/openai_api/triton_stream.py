"""One request to Triton's `generate` model over gRPC streaming (tritonclient's asyncio client), as an
async iterator of `Piece`s: the token(s) and text of each response, the finish reason on the last.

Leaving the iteration early (the HTTP client went away) cancels the gRPC call: Triton marks the
request cancelled and the generate model drops the sequence from its batch at the next step.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from nemotron_deploy.runtime.serving.openai_api.protocol import ApiError, Plan
from nemotron_deploy.runtime.serving.triton.configs import GENERATE_MODEL
from nemotron_deploy.runtime.serving.triton.interface import GENERATE_INPUTS

_DTYPES = {f.name: f.dtype for f in GENERATE_INPUTS}
_ids = itertools.count()


@dataclass(frozen=True)
class Piece:
    tokens: int  # new tokens in this response
    text: str
    finish_reason: str | None  # the generate model's: "eos" | "stop" | "length" on the last piece


def _inputs(plan: Plan) -> list:
    import tritonclient.grpc.aio as grpcclient

    values = {
        "input_ids": np.array([plan.prompt_ids], dtype=np.int32),
        "request_output_len": np.array([[plan.max_tokens]], dtype=np.int32),
        "streaming": np.array([[True]], dtype=np.bool_),
    }
    for name, value in plan.inputs.items():
        values[name] = np.array([[s.encode() for s in value]], dtype=np.object_) if name == "stop_words" else np.array([[value]])
    tensors = []
    for name, value in values.items():
        tensor = grpcclient.InferInput(name, list(value.shape), _DTYPES[name])
        tensor.set_data_from_numpy(value.astype(np.object_ if _DTYPES[name] == "BYTES" else value.dtype))
        tensors.append(tensor)
    return tensors


async def generate(client, plan: Plan, model: str = GENERATE_MODEL) -> AsyncIterator[Piece]:
    """Stream `plan` through the generate model; raises ApiError (502) if Triton answers with an error."""
    inputs = _inputs(plan)

    async def requests():
        yield {"model_name": model, "inputs": inputs, "request_id": f"openai-{next(_ids)}"}

    call = client.stream_infer(requests())
    try:
        async for result, error in call:
            if error is not None:
                raise ApiError(502, f"the generate model failed: {error.message()}", type="server_error")
            ids = result.as_numpy("output_ids")
            text = result.as_numpy("text_output")
            reason = result.as_numpy("finish_reason").reshape(-1)[0].decode() or None
            yield Piece(0 if ids is None else int(ids.size), "" if text is None else text.reshape(-1)[0].decode(), reason)
            if reason is not None:
                return
    finally:
        call.cancel()
