"""config.pbtxt of every model in the repository, built as Triton's own ModelConfig protobuf
(`tritonclient.grpc.model_config_pb2`) and written in its text format, so what we write is what
Triton parses.

Models of `--kind generate`: `tensorrt_llm` (ids in, ids out; our runtime in the Python backend,
decoupled) and, when the artifact has a tokenizer, `preprocessing` and `ensemble` (text in, text
out), named as TensorRT-LLM's models are. `--kind step`: one stateful model over the
step graph for Triton's own onnxruntime or tensorrt backend, states kept by Triton (implicit state).
"""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from nemotron_deploy.runtime.artifact.dtypes import DTYPES
from nemotron_deploy.runtime.serving.triton.interface import (
    GENERATE_INPUTS,
    GENERATE_OUTPUTS,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
    TEXT_TO_GENERATE,
    Field,
)

GENERATE_MODEL = "tensorrt_llm"
TEXT_MODELS = ("preprocessing", "ensemble")
STEP_MODEL = "nemotron_step"

# Triton data types of the step graph's tensors (manifest dtype names)


def to_text(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> pb.ModelConfig:
    """Parse a config.pbtxt with Triton's protobuf (raises text_format.ParseError)."""
    return text_format.Parse(text, pb.ModelConfig())


def _data_type(name: str) -> int:
    return pb.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def _tensors(fields: tuple[Field, ...], kind):
    return [
        kind(
            name=f.name,
            data_type=_data_type(f.dtype),
            dims=list(f.dims),
            **({"optional": True} if f.optional and kind is pb.ModelInput else {}),
        )
        for f in fields
    ]


def _python_model(
    name: str, inputs, outputs, *, max_batch: int, instances: int, params: dict[str, str], decoupled: bool = False
) -> pb.ModelConfig:
    config = pb.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=max_batch,
        input=_tensors(inputs, pb.ModelInput),
        output=_tensors(outputs, pb.ModelOutput),
        instance_group=[pb.ModelInstanceGroup(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)],
    )
    if decoupled:
        config.model_transaction_policy.decoupled = True
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def generate_model(params: dict[str, str], *, max_batch: int, instances: int, text: bool) -> pb.ModelConfig:
    """The decoupled Python-backend model that runs the runtime; `params` go to its initialize().
    text: the artifact has a tokenizer, and responses carry `text_output` too."""
    outputs = GENERATE_OUTPUTS + (TEXT_OUTPUTS if text else ())
    return _python_model(GENERATE_MODEL, GENERATE_INPUTS, outputs, max_batch=max_batch, instances=instances, params=params, decoupled=True)


def text_models(artifact_dir: str, *, max_batch: int) -> dict[str, pb.ModelConfig]:
    """`preprocessing` (text to ids) and the `ensemble` that puts it before the generate model."""
    tokenized = tuple(
        Field(f.name, f.dtype, f.dims, False) for f in GENERATE_INPUTS if f.name in ("input_ids", "input_lengths", "request_output_len")
    )
    preprocessing = _python_model(
        "preprocessing", TEXT_INPUTS[:2], tokenized, max_batch=max_batch, instances=1, params={"artifact_dir": artifact_dir}
    )
    ensemble = pb.ModelConfig(
        name="ensemble",
        platform="ensemble",
        max_batch_size=max_batch,
        input=_tensors(TEXT_INPUTS, pb.ModelInput),
        output=_tensors(TEXT_OUTPUTS, pb.ModelOutput),
    )
    step = pb.ModelEnsembling.Step
    ensemble.ensemble_scheduling.step.extend(
        [
            step(
                model_name="preprocessing",
                model_version=-1,
                input_map={"text_input": "text_input", "max_tokens": "max_tokens"},
                output_map={f.name: f"_{f.name}" for f in tokenized},
            ),
            step(
                model_name=GENERATE_MODEL,
                model_version=-1,
                input_map={**{f.name: f"_{f.name}" for f in tokenized}, **{ours: theirs for theirs, ours in TEXT_TO_GENERATE.items()}},
                output_map={"text_output": "text_output"},
            ),
        ]
    )
    return {"preprocessing": preprocessing, "ensemble": ensemble}


def step_model(manifest, *, platform: str, max_batch: int, instances: int, idle_seconds: int = 600) -> pb.ModelConfig:
    """The step graph as a stateful model: each request is one step of one sequence (input_ids and
    attention_mask of that step); Triton keeps every past.* / present.* pair as implicit state, zero
    at the sequence's start (K/V with past length 0), and batches only steps of equal shapes.

    Triton pairs input and output states by their sorted names: `past.{i}.x` and `present.{i}.x` sort
    in the same order by construction (tests check it). States are not also listed as inputs, and the
    batch dimension is left out of every dims (max_batch_size > 0).
    """
    graph = manifest.graph("prefill")
    by_role = {t.role: t for t in graph.inputs + graph.outputs if t.layer is None}
    config = pb.ModelConfig(
        name=STEP_MODEL,
        platform=platform,
        max_batch_size=max_batch,
        instance_group=[pb.ModelInstanceGroup(count=instances, kind=pb.ModelInstanceGroup.KIND_AUTO)],
    )
    for role in ("input_ids", "attention_mask"):
        config.input.add(name=by_role[role].name, data_type=_data_type(DTYPES[by_role[role].dtype].triton), dims=[-1])
    logits = by_role["logits"]
    config.output.add(name=logits.name, data_type=_data_type(DTYPES[logits.dtype].triton), dims=[_dim(d) for d in logits.shape[1:]])
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = idle_seconds * 1_000_000
    batching.oldest.max_candidate_sequences = 4 * max_batch
    for state in manifest.states:
        dims = [_dim(d) for d in state.shape[1:]]
        dtype = _data_type(DTYPES[state.dtype].triton)
        entry = batching.state.add(input_name=state.name, output_name=state.present, data_type=dtype, dims=dims)
        entry.initial_state.add(name="zeros", data_type=dtype, dims=[0 if d == -1 else d for d in dims], zero_data=True)
    return config


def _dim(d) -> int:
    return d if isinstance(d, int) else -1
