"""Stream tokens from a `nemotron-deploy serve` (or any Triton serving a `nemotron-deploy triton`
repository) over gRPC with tritonclient. The request uses TensorRT-LLM's names, so the same code
talks to TensorRT-LLM on Triton.

    python docs/examples/triton_stream.py --url 127.0.0.1:8001 --prompt-ids 5,17,42 --max-new-tokens 16
    python docs/examples/triton_stream.py --url 127.0.0.1:8001 --text "The runtime" --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import queue

import numpy as np
import tritonclient.grpc as grpcclient


def _input(name: str, value: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(
        name,
        list(value.shape),
        "BYTES"
        if value.dtype == np.object_
        else {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32", np.dtype(np.uint64): "UINT64", np.dtype(np.bool_): "BOOL"}[
            value.dtype
        ],
    )
    tensor.set_data_from_numpy(value)
    return tensor


def stream(url: str, model: str, inputs: dict[str, np.ndarray], output: str, timeout: float = 120.0):
    """Yield the `output` array of each streamed response; raises on an error response."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, [_input(k, v) for k, v in inputs.items()], enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise RuntimeError(error.message())
            if result.get_response().parameters["triton_final_response"].bool_param and result.as_numpy(output) is None:
                return
            yield result.as_numpy(output)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return
    finally:
        client.stop_stream()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt-ids", help="comma-separated token ids (model tensorrt_llm)")
    what.add_argument("--text", help="prompt text (model ensemble; the artifact needs a tokenizer)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()

    one = lambda value, dtype: np.array([[value]], dtype=dtype)  # noqa: E731  (batch of 1, one value)
    sampling = {
        "temperature": (args.temperature, np.float32),
        "runtime_top_k": (args.top_k, np.int32),
        "runtime_top_p": (args.top_p, np.float32),
        "random_seed": (args.seed, np.uint64),
    }
    if args.prompt_ids:
        ids = np.array([[int(t) for t in args.prompt_ids.split(",")]], dtype=np.int32)
        inputs = {
            "input_ids": ids,
            "input_lengths": one(ids.shape[1], np.int32),
            "request_output_len": one(args.max_new_tokens, np.int32),
            "streaming": one(True, np.bool_),
        }
        inputs.update({name: one(v, dtype) for name, (v, dtype) in sampling.items() if v is not None})
        for ids in stream(args.url, "tensorrt_llm", inputs, "output_ids"):
            print(*ids.reshape(-1).tolist(), end=" ", flush=True)
    else:
        renamed = {"runtime_top_k": "top_k", "runtime_top_p": "top_p"}
        inputs = {
            "text_input": np.array([[args.text.encode()]], dtype=np.object_),
            "max_tokens": one(args.max_new_tokens, np.int32),
            "stream": one(True, np.bool_),
        }
        inputs.update({renamed.get(name, name): one(v, dtype) for name, (v, dtype) in sampling.items() if v is not None})
        for text in stream(args.url, "ensemble", inputs, "text_output"):
            print(text.reshape(-1)[0].decode(), end="", flush=True)
    print()


if __name__ == "__main__":
    main()
