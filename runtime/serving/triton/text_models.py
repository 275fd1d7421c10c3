"""The text end of the `ensemble` model (TensorRT-LLM's names): `preprocessing` tokenizes
`text_input` with the artifact's tokenizer.json (parameter artifact_dir). The generate model itself
detokenizes (`text_output`): it has each sequence's earlier tokens, which a streamed piece's text
depends on."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend's stub

from nemotron_deploy.runtime.artifact.manifest import read_manifest
from nemotron_deploy.runtime.tokenizer import Tokenizer


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class Preprocessing:
    """text_input (BYTES [1]), max_tokens (INT32 [1]) -> input_ids, input_lengths, request_output_len."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.tokenizer = Tokenizer(read_manifest(config["parameters"]["artifact_dir"]["string_value"]).tokenizer_file)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        texts = _input(request, "text_input").reshape(-1)
        if texts.size != 1:
            return _error(f"text_input: expected one prompt per request, got {texts.size}")
        raw = texts[0]
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as e:
            return _error(f"text_input: not UTF-8 ({e})")
        ids = self.tokenizer.encode(text)
        if not ids:
            return _error("text_input: empty prompt; expected some text")
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor("input_ids", np.array([ids], dtype=np.int32)),
                pb_utils.Tensor("input_lengths", np.array([[len(ids)]], dtype=np.int32)),
                pb_utils.Tensor("request_output_len", _input(request, "max_tokens").astype(np.int32).reshape(1, 1)),
            ]
        )
