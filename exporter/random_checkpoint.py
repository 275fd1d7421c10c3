"""A tiny random NemotronH checkpoint in the hub's layout, for demos and smoke tests.

Written the way hub checkpoints are (hybrid_override_pattern, `backbone.` keys, one tensor per
expert), into a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nemotron_deploy.runtime.artifact.atomic import new_directory

TINY_CONFIG = {
    "architectures": ["NemotronHForCausalLM"],
    "model_type": "nemotron_h",
    "vocab_size": 128,
    "hidden_size": 64,
    "hybrid_override_pattern": "M-ME*ME",
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "mamba_num_heads": 4,
    "mamba_head_dim": 16,
    "n_groups": 2,
    "ssm_state_size": 16,
    "conv_kernel": 4,
    "chunk_size": 16,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 48,
    "n_group": 2,
    "topk_group": 1,
    "max_position_embeddings": 1024,
    "eos_token_id": 2,
    "bos_token_id": 1,
    "pad_token_id": 0,
    "torch_dtype": "float32",
}


def write_random_checkpoint(
    out_dir: str | Path, seed: int = 0, config: dict | None = None, dtype: str = "float32", shard_bytes: int | None = None
) -> Path:
    """Write config.json, random weights, generation_config.json, a small tokenizer.json and a
    tokenizer_config.json with a chat template to `out_dir` (which must not exist yet).

    dtype: the stored dtype (float32, float16, bfloat16). shard_bytes: None writes one
    `model.safetensors`; otherwise shards of about that size with a `model.safetensors.index.json`,
    as the hub's checkpoints are. Tensors are made and written a shard at a time, so a checkpoint
    larger than memory can be written.
    """
    import torch

    from nemotron_deploy.exporter.config import ModelConfig
    from nemotron_deploy.exporter.modeling.model import NemotronHStepModel

    raw = dict(config or TINY_CONFIG, torch_dtype=dtype)
    cfg = ModelConfig.from_hf(raw)
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: p for name, p in NemotronHStepModel(cfg).state_dict().items()}
    with new_directory(out_dir) as tmp:
        _write_shards(tmp, _random_tensors(shapes, gen, getattr(torch, dtype)), shard_bytes)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
        write_demo_tokenizer(tmp / "tokenizer.json", cfg.vocab_size)
        (tmp / "tokenizer_config.json").write_text(json.dumps(DEMO_TOKENIZER_CONFIG, indent=1))
    return Path(out_dir)


def _random_tensors(shapes: dict, gen, dtype):
    """(hub key, tensor) pairs, one expert at a time for the stacked expert parameters."""
    from nemotron_deploy.exporter.checkpoint import hf_key

    for name, meta in shapes.items():
        keep = meta.dtype if name.endswith("e_score_correction_bias") else dtype
        if ".experts_" in name:
            for j in range(meta.shape[0]):
                yield hf_key(name, j), _random_like(name, meta.shape[1:], gen).to(keep)
        else:
            yield hf_key(name), _random_like(name, meta.shape, gen).to(keep)


def _write_shards(folder: Path, tensors, shard_bytes: int | None) -> None:
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for key, tensor in tensors:
        current[key] = tensor.contiguous()
        size += tensor.numel() * tensor.element_size()
        if shard_bytes is not None and size >= shard_bytes:
            shards.append(_save_shard(folder, len(shards), current))
            current, size = {}, 0
    if shard_bytes is None:
        save_file(current, folder / "model.safetensors", metadata={"format": "pt"})
        return
    if current:
        shards.append(_save_shard(folder, len(shards), current))
    # the hub's names: model-00001-of-00004.safetensors
    weight_map = {}
    for i, (tmp_name, keys) in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / tmp_name).rename(folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))


def _save_shard(folder: Path, index: int, tensors: dict) -> tuple[str, list[str]]:
    from safetensors.torch import save_file

    name = f"shard-{index}.safetensors"
    save_file(tensors, folder / name, metadata={"format": "pt"})
    return name, list(tensors)


_CORPUS = """NemotronH is a hybrid of Mamba-2 layers, attention layers, dense MLP layers and mixture of
experts layers. The exporter traces the model step by step: one call consumes new tokens for a batch of
sequences and returns every recurrent state. The runtime decodes on onnxruntime or on TensorRT."""


# A plain-text chat template (the demo tokenizer has no chat tokens): "user: Hi\nassistant:"
DEMO_TOKENIZER_CONFIG = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "chat_template": "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}",
}


def write_demo_tokenizer(path: Path, vocab_size: int) -> None:
    """A small BPE tokenizer trained on a fixed text: ids 0..3 are <pad>, <s>, </s>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False)
    tok.train_from_iterator([_CORPUS], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(path))


def _random_like(name: str, shape, gen):
    import torch

    if name.endswith(("norm.weight", "norm_f.weight", ".D")):
        return torch.ones(shape)
    if name.endswith("A_log"):
        return torch.log(torch.arange(1, math.prod(shape) + 1, dtype=torch.float32)).reshape(shape)
    if name.endswith("dt_bias"):
        return torch.full(shape, -4.0)
    if name.endswith("bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=gen) * 0.1
