"""What a checkpoint holds, from its config and safetensors headers only (no tensor data is read)."""

from __future__ import annotations

from pathlib import Path

from nemotron_deploy.exporter import io_spec
from nemotron_deploy.exporter.checkpoint import open_checkpoint
from nemotron_deploy.exporter.parameters import active_parameters, num_parameters
from nemotron_deploy.runtime.artifact.dtypes import dtype_bytes


def inspect_checkpoint(path: str | Path) -> dict:
    """A JSON-ready summary of the checkpoint at `path`; validates every tensor against the config.

    num_parameters counts like `sum(p.numel() for p in transformers_model.parameters())`: the lm_head
    is counted even when the embeddings are tied (transformers keeps its own), the router's
    e_score_correction_bias (a buffer) is not. Active parameters per token leave out the routed
    experts a token does not use. State and KV sizes are in the checkpoint's dtype (SSM state in
    mamba_ssm_cache_dtype).
    """
    ckpt = open_checkpoint(path)
    cfg = ckpt.config
    dtype = ckpt.stored_dtype
    return {
        "path": str(ckpt.path),
        "layer_types": list(cfg.layer_types),
        "pattern": cfg.pattern,
        "layer_counts": {k: len(cfg.layers_of(k)) for k in ("mamba", "attention", "mlp", "moe")},
        "num_parameters": num_parameters(cfg),
        "active_parameters_per_token": active_parameters(cfg),
        "dtype": dtype,
        "checkpoint_bytes": ckpt.num_bytes,
        "checkpoint_files": len(ckpt.files),
        "state_bytes_per_sequence": io_spec.state_bytes_per_sequence(cfg, dtype_bytes(dtype)),
        "kv_bytes_per_token": io_spec.kv_bytes_per_token(cfg, dtype_bytes(dtype)),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_id": list(cfg.eos_token_id),
    }


def format_summary(info: dict) -> list[tuple[str, str]]:
    """(label, value) rows for a human-readable table."""

    def size(n: int) -> str:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if n < 1024 or unit == "TiB":
                return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
            n /= 1024
        return str(n)

    counts = ", ".join(f"{v} {k}" for k, v in info["layer_counts"].items() if v)
    return [
        ("layers", f"{len(info['layer_types'])} ({counts})"),
        ("pattern", info["pattern"]),
        ("parameters", f"{info['num_parameters']:,}"),
        ("active per token", f"{info['active_parameters_per_token']:,}"),
        ("dtype", info["dtype"]),
        ("checkpoint", f"{size(info['checkpoint_bytes'])} in {info['checkpoint_files']} file(s)"),
        ("state per sequence", size(info["state_bytes_per_sequence"])),
        ("KV per token", size(info["kv_bytes_per_token"])),
        ("vocab / hidden", f"{info['vocab_size']} / {info['hidden_size']}"),
    ]
