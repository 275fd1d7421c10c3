"""Train a small NemotronH on text every machine has, so quantization accuracy can be measured on trained
weights (random weights say little about them), without a download.

    python benchmarks/train_reference.py OUT_DIR [--size small|tiny] [--minutes 25] [--steps N] [--seed 0]

The corpus is this Python's standard library sources (code, comments and docstrings), split by file:
about 1 file in 20 is held out (by a hash of its path), the rest is trained on. A byte-level BPE
tokenizer is trained on the training files with `tokenizers`; the model (transformers' NemotronH, every
layer kind: Mamba-2, attention, dense MLP and MoE with 32 routed experts, top-4) is trained from
transformers' own initialization with AdamW on random windows, until `--steps` or `--minutes`, and saved
with `save_pretrained` (safetensors) beside tokenizer.json, tokenizer_config.json and reference.json
(what was trained, how long, the final and held-out loss). `small`: ~11 M parameters, the accuracy
table's model (docs/quantization.md); `tiny`: ~0.3 M, what the tests train (1000 steps, under a minute).
Held-out windows for evaluation: `heldout_windows`.
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
import zlib
from pathlib import Path

import numpy as np

# transformers 5.23 spells the layer kinds this way in layers_block_type
_HF_KIND = {"mamba": "linear_attention", "attention": "full_attention", "mlp": "mlp", "moe": "moe"}
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3
EOS = 2

SIZES = {
    "small": dict(
        vocab_size=4096,
        seq_len=256,
        batch=8,
        lr=3e-3,
        text_mb=24,
        model=dict(
            layers=["mamba", "moe", "attention", "mamba", "mlp", "moe", "mamba", "moe"],
            hidden_size=256,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            intermediate_size=768,
            mamba_num_heads=8,
            mamba_head_dim=64,
            n_groups=2,
            ssm_state_size=64,
            chunk_size=64,
            n_routed_experts=32,
            num_experts_per_tok=4,
            moe_intermediate_size=128,
            moe_shared_expert_intermediate_size=256,
        ),
    ),
    "tiny": dict(
        vocab_size=512,
        seq_len=128,
        batch=8,
        lr=4e-3,
        text_mb=2,
        model=dict(
            layers=["mamba", "moe", "attention", "mlp"],
            hidden_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            intermediate_size=128,
            mamba_num_heads=4,
            mamba_head_dim=32,
            n_groups=1,
            ssm_state_size=32,
            chunk_size=32,
            n_routed_experts=32,
            num_experts_per_tok=4,
            moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=64,
        ),
    ),
}


def corpus_files() -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): the standard library's .py sources, sorted, split by a hash of
    each file's path inside the library (the same split on every machine with this Python)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    held = [p for p in files if zlib.crc32(str(p.relative_to(root)).encode()) % 20 == 0]
    kept = set(held)
    return [p for p in files if p not in kept], held


def read_texts(files: list[Path], limit_bytes: int) -> list[str]:
    texts, total = [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def token_stream(tok, texts: list[str]) -> np.ndarray:
    """Every text's ids, each followed by </s>, as one int64 stream."""
    ids = [np.asarray(e.ids + [EOS], dtype=np.int64) for e in tok.encode_batch(texts)]
    return np.concatenate(ids)


def heldout_windows(checkpoint: str | Path, count: int, length: int) -> list[list[int]]:
    """`count` windows of `length` token ids, evenly spaced over the held-out files' stream, tokenized with
    the checkpoint's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
    info = json.loads((Path(checkpoint) / "reference.json").read_text())
    _, held = corpus_files()
    stream = token_stream(tok, read_texts(held, info["heldout_mb"] << 20))
    starts = np.linspace(0, len(stream) - length - 1, count).astype(int)
    return [stream[s : s + length].tolist() for s in starts]


def model_config(size: str):
    from transformers import NemotronHConfig

    spec = SIZES[size]
    kw = dict(spec["model"])
    kw["layers_block_type"] = [_HF_KIND[k] for k in kw.pop("layers")]
    cfg = NemotronHConfig(
        vocab_size=spec["vocab_size"],
        max_position_embeddings=4 * spec["seq_len"],
        tie_word_embeddings=False,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        **kw,
    )
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    return cfg


def _next_token_loss(model, x):
    """Mean cross-entropy of each next token of x (B, T+1) int64 given the ones before it."""
    import torch.nn.functional as F

    logits = model(input_ids=x[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))


def train(out: Path, size: str = "small", minutes: float = 25.0, steps: int | None = None, seed: int = 0, log=print) -> dict:
    import torch
    from transformers import NemotronHForCausalLM

    spec = SIZES[size]
    started = time.monotonic()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_files, held_files = corpus_files()
    texts = read_texts(train_files, spec["text_mb"] << 20)
    tok = train_tokenizer(texts, spec["vocab_size"])
    stream = token_stream(tok, texts)
    held = token_stream(tok, read_texts(held_files, 1 << 20))
    log(f"corpus: {len(texts)} files, {len(stream)} training tokens, {len(held)} held-out tokens ({time.monotonic() - started:.0f} s)")

    model = NemotronHForCausalLM(model_config(size)).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    seq, batch, warmup = spec["seq_len"], spec["batch"], 30
    budget_s = minutes * 60
    train_start, step, losses = time.monotonic(), 0, []
    while (steps is None or step < steps) and (steps is not None or time.monotonic() - train_start < budget_s):
        done = step / steps if steps else (time.monotonic() - train_start) / budget_s
        lr = spec["lr"] * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = rng.integers(0, len(stream) - seq - 1, batch)
        loss = _next_token_loss(model, torch.from_numpy(np.stack([stream[s : s + seq + 1] for s in starts])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log(f"step {step}: loss {np.mean(losses[-50:]):.3f}, lr {lr:.2e}, {time.monotonic() - train_start:.0f} s")
    model.eval()
    with torch.no_grad():
        windows = [held[s : s + seq + 1] for s in np.linspace(0, len(held) - seq - 2, 16).astype(int)]
        heldout = float(_next_token_loss(model, torch.from_numpy(np.stack(windows))))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    info = {
        "size": size,
        "parameters": params,
        "steps": step,
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed,
        "train_loss_last_50": float(np.mean(losses[-50:])),
        "heldout_loss": heldout,
        "heldout_perplexity": math.exp(heldout),
        "seq_len": seq,
        "batch": batch,
        "corpus": "Python standard library sources, held out by path hash (1 in 20)",
        "train_tokens": int(len(stream)),
        "heldout_mb": 1,
    }
    (out / "reference.json").write_text(json.dumps(info, indent=1))
    log(json.dumps(info))
    return info


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--minutes", type=float, default=25.0, help="training time (the corpus and tokenizer come first)")
    ap.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train(Path(args.out), args.size, args.minutes, args.steps, args.seed, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
