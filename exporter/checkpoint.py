"""Hugging Face NemotronH checkpoint -> `NemotronHStepModel`, through safetensors and JSON only.

Key layouts accepted (all seen in the wild):
  * prefix `backbone.` (hub, transformers) or `model.`;
  * embedding `embeddings.weight` (hub, transformers 5.2x) or `embedding.weight` (transformers 5.3);
  * experts per expert `mixer.experts.{j}.up_proj.weight` (what `save_pretrained` writes) or fused
    3-D `mixer.experts.up_proj` (X, I, Din) / `down_proj` (X, Din, I), with or without `.weight`;
  * `lm_head.weight` present, or absent with `tie_word_embeddings` (then the embedding is reused);
  * multi-token-prediction tensors `mtp.*` are ignored (the step model does not use them).
Anything else that is missing, extra or mis-shaped fails with a message naming the tensor.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.exporter.parameters import parameter_shapes
from nemotron_deploy.exporter.safetensors_mmap import MappedFiles, TensorInfo, list_tensors
from nemotron_deploy.runtime.artifact.errors import CheckpointError

_PER_EXPERT = re.compile(r"layers\.(\d+)\.mixer\.experts\.(\d+)\.(up|down)_proj\.weight")
_FUSED_EXPERT = re.compile(r"layers\.(\d+)\.mixer\.experts\.(up|down)_proj(?:\.weight)?")
_RENAMES = {"embedding.weight": "embeddings.weight"}
_ROUTER = {"mixer.gate.weight": "mixer.router_weight", "mixer.gate.e_score_correction_bias": "mixer.e_score_correction_bias"}


def _canonical(key: str) -> tuple[str, int | None] | None:
    """Checkpoint key -> (model parameter name, expert index or None); None for ignored keys."""
    if key.startswith("mtp."):
        return None
    for prefix in ("backbone.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    key = _RENAMES.get(key, key)
    if m := _PER_EXPERT.fullmatch(key):
        return f"layers.{m[1]}.mixer.experts_{m[3]}", int(m[2])
    if m := _FUSED_EXPERT.fullmatch(key):
        return f"layers.{m[1]}.mixer.experts_{m[2]}", None
    for old, new in _ROUTER.items():
        if key.endswith(old):
            return key[: -len(old)] + new, None
    return key, None


def hf_key(name: str, expert: int | str | None = None) -> str:
    """Our parameter name -> the hub checkpoint key (per-expert keys need `expert`, default "{j}")."""
    for ours, theirs in (
        ("mixer.router_weight", "mixer.gate.weight"),
        ("mixer.e_score_correction_bias", "mixer.gate.e_score_correction_bias"),
    ):
        if name.endswith(ours):
            name = name[: -len(ours)] + theirs
    if m := re.fullmatch(r"layers\.(\d+)\.mixer\.experts_(up|down)", name):
        name = f"layers.{m[1]}.mixer.experts.{'{j}' if expert is None else expert}.{m[2]}_proj.weight"
    return name if name == "lm_head.weight" else f"backbone.{name}"


@dataclass
class Checkpoint:
    """A checkpoint directory whose tensors were matched to the model's parameters (headers only)."""

    path: Path
    config: ModelConfig
    # model parameter name -> its source tensors: {None: fused or plain tensor} or {expert j: tensor}
    sources: dict[str, dict[int | None, TensorInfo]]
    files: list[Path]

    @property
    def stored_dtype(self) -> str:
        """The dtype of most parameters on disk (float32, float16 or bfloat16)."""
        counts: dict[str, int] = defaultdict(int)
        for parts in self.sources.values():
            for info in parts.values():
                counts[info.torch_dtype_name] += 1
        return max(counts, key=counts.get)

    @property
    def num_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read config.json and the safetensors headers and check every tensor against the config.

    Costs only the headers (no tensor data is read), and needs no torch. Raises ConfigError / CheckpointError.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face checkpoint directory)")
    cfg = ModelConfig.from_file(path)
    tensors = list_tensors(path)
    sources = _match(tensors, parameter_shapes(cfg), cfg, path)
    return Checkpoint(path, cfg, sources, sorted({t.file for t in tensors.values()}))


def _match(tensors: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]], cfg: ModelConfig, path: Path):
    sources: dict[str, dict[int | None, TensorInfo]] = defaultdict(dict)
    for key, info in tensors.items():
        canon = _canonical(key)
        if canon is None:
            continue
        name, expert = canon
        if name not in expected:
            raise CheckpointError(f"{info.file}: unexpected tensor '{key}' (not part of a model with layers {cfg.pattern})")
        sources[name][expert] = info
    if "lm_head.weight" not in sources and cfg.tie_word_embeddings and "embeddings.weight" in sources:
        sources["lm_head.weight"] = sources["embeddings.weight"]
    for name, shape in expected.items():
        parts = sources.get(name)
        if not parts:
            hint = " (and tie_word_embeddings is false)" if name == "lm_head.weight" else ""
            raise CheckpointError(f"{path}: missing tensor '{hf_key(name)}' of shape {list(_part_shape(name, shape))}{hint}")
        _check_shapes(name, shape, parts, cfg)
    return dict(sources)


def _part_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if ".experts_" in name else shape


def _check_shapes(name: str, shape: tuple[int, ...], parts: dict[int | None, TensorInfo], cfg: ModelConfig) -> None:
    if None in parts:
        if len(parts) > 1:
            raise CheckpointError(f"{parts[None].file}: experts of '{hf_key(name)}' stored both fused and per expert")
        info = parts[None]
        if info.shape != shape:
            raise CheckpointError(
                f"{info.file}: tensor '{info.name}' has shape {list(info.shape)}, expected {list(shape)} from config.json"
            )
        return
    missing = sorted(set(range(cfg.n_routed_experts)) - set(parts))
    if missing:
        raise CheckpointError(f"missing tensor '{hf_key(name, missing[0])}' (config.json says n_routed_experts={cfg.n_routed_experts})")
    extra = sorted(set(parts) - set(range(cfg.n_routed_experts)))
    if extra:
        raise CheckpointError(
            f"{parts[extra[0]].file}: unexpected tensor '{parts[extra[0]].name}' (config.json says n_routed_experts={cfg.n_routed_experts})"
        )
    for info in parts.values():
        if info.shape != shape[1:]:
            raise CheckpointError(
                f"{info.file}: tensor '{info.name}' has shape {list(info.shape)}, expected {list(shape[1:])} from config.json"
            )


def parameter_dtype(name: str, dtype: str) -> str:
    """The dtype a parameter takes in a model computing in `dtype`: the router's correction bias stays fp32."""
    return "float32" if name.endswith("e_score_correction_bias") else dtype


def compute_dtype(ckpt: Checkpoint, dtype: str | None) -> str:
    dtype = dtype or ckpt.stored_dtype
    if dtype not in ("float32", "float16", "bfloat16"):
        raise CheckpointError(f"dtype {dtype!r}: expected float32, float16 or bfloat16")
    return dtype


def meta_model(ckpt: Checkpoint, dtype: str | None = None, all_logits: bool = False):
    """The step model of `ckpt` with every parameter on the `meta` device (shapes and dtypes, no data):
    what the exporter traces. Eval mode, dtypes as `load_model` would give them."""
    import torch

    from nemotron_deploy.exporter.modeling.model import NemotronHStepModel

    dtype = compute_dtype(ckpt, dtype)
    with torch.device("meta"):
        model = NemotronHStepModel(ckpt.config, all_logits=all_logits)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensor.data = tensor.data.to(getattr(torch, parameter_dtype(name, dtype)))
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, dtype: str | None = None, all_logits: bool = False):
    """Build a `NemotronHStepModel` in eval mode from a checkpoint directory.

    dtype: compute dtype ("float32", "float16", "bfloat16"); default: the dtype stored on disk.
    Tensors already in `dtype` are memory-mapped views of the files (no copy); others are converted
    one at a time. The router's e_score_correction_bias always stays fp32.
    """
    import torch

    from nemotron_deploy.exporter.modeling.model import NemotronHStepModel

    ckpt = open_checkpoint(path)
    dtype = compute_dtype(ckpt, dtype)
    files = MappedFiles()
    state = {}
    for name, parts in ckpt.sources.items():
        if None in parts:
            tensor = files.tensor(parts[None])
        else:
            tensor = torch.stack([files.tensor(parts[j]) for j in range(len(parts))])
        state[name] = tensor.to(getattr(torch, parameter_dtype(name, dtype)))
    with torch.device("meta"):
        model = NemotronHStepModel(ckpt.config, all_logits=all_logits)
    model.load_state_dict(state, strict=True, assign=True)
    model._mapped_files = files  # keep the memory maps alive as long as the model
    return model.eval().requires_grad_(False)
