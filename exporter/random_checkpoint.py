"""A tiny random NemotronH checkpoint in the hub's layout, for demos and smoke tests.

Written the way hub checkpoints are (hybrid_override_pattern, `backbone.` keys, one tensor per
expert), into a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from nemotron_deploy.runtime.errors import NemotronDeployError

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


def write_random_checkpoint(out_dir: str | Path, seed: int = 0, config: dict | None = None) -> Path:
    """Write config.json, model.safetensors (random weights), generation_config.json and a small
    tokenizer.json to `out_dir` (which must not exist yet)."""
    import torch
    from safetensors.torch import save_file

    from nemotron_deploy.exporter.checkpoint import hf_key
    from nemotron_deploy.exporter.config import ModelConfig
    from nemotron_deploy.exporter.modeling.model import NemotronHStepModel

    out = Path(out_dir)
    if out.exists():
        raise NemotronDeployError(f"{out}: already exists; choose a new output directory")
    raw = dict(config or TINY_CONFIG)
    cfg = ModelConfig.from_hf(raw)
    torch.manual_seed(seed)
    model = NemotronHStepModel(cfg)
    tensors = {}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            value = _random_like(name, p)
            if ".experts_" in name:
                tensors.update({hf_key(name, j): value[j].contiguous() for j in range(value.shape[0])})
            else:
                tensors[hf_key(name)] = value.contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
        write_demo_tokenizer(tmp / "tokenizer.json", cfg.vocab_size)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_CORPUS = """NemotronH is a hybrid of Mamba-2 layers, attention layers, dense MLP layers and mixture of
experts layers. The exporter traces the model step by step: one call consumes new tokens for a batch of
sequences and returns every recurrent state. The runtime decodes on onnxruntime or on TensorRT."""


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


def _random_like(name: str, p):
    import torch

    if name.endswith(("norm.weight", "norm_f.weight")):
        return torch.ones_like(p)
    if name.endswith("A_log"):
        return torch.log(torch.arange(1, p.numel() + 1, dtype=p.dtype))
    if name.endswith("dt_bias"):
        return torch.full_like(p, -4.0)
    if name.endswith(".D"):
        return torch.ones_like(p)
    if name.endswith("bias"):
        return torch.zeros_like(p)
    return torch.randn_like(p) * 0.1
