"""`nemotron-deploy` command line. It only parses arguments and calls library functions; heavy
imports (torch, onnxruntime) happen inside the commands that need them, after a check that names the
extra to install when a package is missing."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import warnings

import click

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError

# the packages each optional extra of pyproject.toml brings, as the commands import them
EXTRAS = {
    "export": ("torch", "onnx", "onnxscript", "onnx_ir", "onnx_graphsurgeon", "tqdm", "safetensors", "tokenizers"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "triton": ("pytriton", "tritonclient", "onnxruntime", "tokenizers"),
}
_EXTRA_OF_MODULE = {m: extra for extra in ("export", "onnxruntime", "triton") for m in EXTRAS[extra]}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(command: str, *extras: str) -> None:
    """One line naming the extra to install when a package `command` needs is missing."""
    for extra in extras:
        missing = [m for m in EXTRAS[extra] if not _installed(m)]
        if missing:
            raise NemotronDeployError(f"'nemotron-deploy {command}' needs the '{extra}' extra ({missing[0]} is not installed): pip install 'nemotron-deploy[{extra}]'")


def _one_line_errors(fn):
    """Bad input becomes `error: <message>` on stderr and exit status 2, never a traceback; a missing
    optional package names its extra; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NemotronDeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            if root not in _EXTRA_OF_MODULE:
                raise
            extra = _EXTRA_OF_MODULE[root]
            click.echo(f"error: this command needs the '{extra}' extra ({root} is not installed): pip install 'nemotron-deploy[{extra}]'", err=True)
            sys.exit(2)

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


class _Main(click.Group):
    """One error style for everything: click's usage errors too (`error: ...`, exit 2); Ctrl-C is
    `interrupted`, exit 130 (the shell's convention), wherever it lands."""

    def main(self, args=None, prog_name=None, **kwargs):
        warnings.showwarning = _show_warning
        try:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("\nerror: interrupted", err=True)
            sys.exit(130)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nemotron-deploy")
def main() -> None:
    """Export NemotronH checkpoints to ONNX / TensorRT and run them."""


@main.command()
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_one_line_errors
def inspect(checkpoint_dir: str, as_json: bool) -> None:
    """Layer pattern, parameter counts and state sizes of a Hugging Face NemotronH checkpoint.

    Reads only config.json and the safetensors headers, and checks every tensor against the config.
    """
    from nemotron_deploy.exporter.inspect import format_summary, inspect_checkpoint

    info = inspect_checkpoint(checkpoint_dir)
    if as_json:
        click.echo(json.dumps(info))
        return
    for label, value in format_summary(info):
        click.echo(f"{label:>20}  {value}")


@main.command()
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("-o", "--output", "out_dir", required=True, help="New artifact directory to write.")
@click.option("--target", type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx"]), default="onnxruntime", show_default=True,
              help="onnxruntime: standard ops + onnxruntime's MoE node (docs/export.md). tensorrt: Mamba-2 core and MoE dispatch as plugin nodes (docs/plugins.md). tensorrt-rtx: standard ops for TensorRT for RTX.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
              help="Block-wise integer weights for every large matrix and the experts (onnxruntime target, float32; docs/quantization.md).")
@click.option("--block-size", type=int, default=None, help="Weights per quantization scale, a power of two >= 16 that divides every layer width.  [default: 32]")
@_one_line_errors
def export(checkpoint_dir: str, out_dir: str, target: str, dtype: str, quantize: str | None, block_size: int | None) -> None:
    """Export a checkpoint to ONNX step graphs (prefill + decode), shared weights and a manifest."""
    require("export", "export")
    from nemotron_deploy.exporter.onnx_export import export_artifact

    path = export_artifact(checkpoint_dir, out_dir, target=target, dtype=dtype, quantize=quantize, block_size=block_size)
    click.echo(f"wrote {path}", err=True)


def _parse_ids(text: str) -> list[int]:
    items = text.replace(" ", "").split(",")
    try:
        if "" in items:
            raise ValueError
        return [int(t) for t in items]
    except ValueError:
        raise NemotronDeployError(f"--prompt-ids {text!r}: expected comma-separated integers such as 1,2,3") from None


def _sampling(greedy, temperature, top_k, top_p, seed, penalties=None):
    """penalties: repetition_penalty / presence_penalty / frequency_penalty (None: off)."""
    from nemotron_deploy.runtime.sampling import Sampling

    penalties = {name: value for name, value in (penalties or {}).items() if value is not None}
    sample = temperature is not None or top_k is not None or top_p is not None
    if greedy and sample:
        raise NemotronDeployError("--greedy cannot be combined with --temperature/--top-k/--top-p")
    if not sample:
        return Sampling(greedy=True, seed=seed, **penalties)
    return Sampling(greedy=False, temperature=1.0 if temperature is None else temperature, top_k=top_k or 0,
                    top_p=1.0 if top_p is None else top_p, seed=seed, **penalties)  # fmt: skip


@main.command()
@click.argument("artifact_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--engine", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default=None, help="Default: the artifact's target (tensorrt or tensorrt-rtx).")
@click.option("--plugins", "plugins_lib", type=click.Path(dir_okay=False), default=None, help="Plugin library for tensorrt-target artifacts (default: $NEMOTRON_DEPLOY_PLUGINS).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None, help="Default: the export's dtype.")
@click.option("--max-batch", default=8, show_default=True, type=int, help="Largest batch the engines accept.")
@click.option("--max-seq-len", default=None, type=int, help="Largest past + new tokens (default: min(4096, max_position_embeddings)).")
@click.option("--max-prefill-tokens", default=None, type=int, help="Largest number of new tokens per prefill call (default: min(2048, max-seq-len)); longer prompts are prefilled in pieces.")
@click.option("--compute-capability", default=None, help="tensorrt-rtx: build ahead of time for this GPU (e.g. 86), also without a GPU.")
@_one_line_errors
def build(artifact_dir, engine, plugins_lib, precision, max_batch, max_seq_len, max_prefill_tokens, compute_capability) -> None:
    """Build TensorRT engines (.plan) for the prefill and decode graphs of an exported artifact."""
    from nemotron_deploy.exporter.engine_build import Limits, build_engines, default_engine
    from nemotron_deploy.runtime.artifact.manifest import read_manifest

    manifest = read_manifest(artifact_dir)
    engine = engine or default_engine(manifest)
    limits = Limits.default(manifest.model.max_position_embeddings, max_batch, max_seq_len, max_prefill_tokens)
    plans = build_engines(artifact_dir, engine, plugins=plugins_lib, precision=precision, limits=limits,
                          compute_capability=compute_capability, progress=lambda m: click.echo(m, err=True))  # fmt: skip
    for plan in plans:
        click.echo(str(plan))


def _backend_options(fn):
    """--backend and the options of the tensorrt backend."""
    fn = click.option("--plugins", "plugins_lib", type=click.Path(dir_okay=False), default=None,
                      help="tensorrt: plugin library (default: $NEMOTRON_DEPLOY_PLUGINS, else the one recorded by `build`).")(fn)
    fn = click.option("--engine", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default=None,
                      help="tensorrt: which built engines to run (default: the first the manifest records).")(fn)
    return click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "reference"]), default="onnxruntime", show_default=True,
                        help="tensorrt: the .plan engines of `nemotron-deploy build`, on a GPU. reference: a tensorrt-target "
                             "artifact on the CPU, plugin nodes run by their torch references (slow; for checks).")(fn)  # fmt: skip


def _cache_options(fn):
    """--cache-dir / --no-cache, handed to the command as `cache` (runtime.onnx_prepacked.CachePolicy)."""

    @functools.wraps(fn)
    def wrapper(*args, cache_dir=None, no_cache=False, **kwargs):
        from pathlib import Path

        from nemotron_deploy.runtime.onnx_prepacked import CachePolicy

        if cache_dir and no_cache:
            raise NemotronDeployError("--cache-dir and --no-cache: give one of them")
        return fn(*args, cache=CachePolicy(enabled=not no_cache, directory=Path(cache_dir) if cache_dir else None), **kwargs)

    wrapper = click.option("--no-cache", is_flag=True,
                           help="onnxruntime, quantized artifacts: pack the weights in memory in this process instead of "
                                "mapping this machine's pre-packed weights cache (docs/export.md).")(wrapper)  # fmt: skip
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                        help="Where this machine's pre-packed weights cache lives (default: $NEMOTRON_DEPLOY_CACHE, else "
                             "beside the artifact when writable, else ~/.cache/nemotron-deploy).")(wrapper)  # fmt: skip


_BACKEND = _backend_options
_CACHE = _cache_options
_PROVIDER = click.option("--provider", "providers", multiple=True, help="onnxruntime execution provider (repeatable); default CPUExecutionProvider.")


@main.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("--prompt", "prompts", multiple=True, help="Text prompt (repeatable: a batch). Needs the artifact's tokenizer.")
@click.option("--prompt-ids", "prompt_ids", multiple=True, help="Prompt as token ids, e.g. 1,2,3 (repeatable).")
@click.option("--chat", "chat_message", help="A user message, rendered with the artifact's chat template (instead of --prompt).")
@click.option("--system", "system_message", help="With --chat: a system message before it.")
@click.option("--chat-template-kwargs", "template_kwargs", help='With --chat: JSON object of what else the template reads, e.g. \'{"enable_thinking": false}\'.')
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--greedy", is_flag=True, help="Argmax decoding (the default unless a sampling option is given).")
@click.option("--temperature", type=float, help="Sampling temperature (> 0); implies sampling.")
@click.option("--top-k", type=int, help="Sample from the k most likely tokens only (0: no limit); implies sampling.")
@click.option("--top-p", type=float, help="Sample from the most likely tokens whose mass reaches p (0 < p <= 1); implies sampling.")
@click.option("--seed", type=int, help="Seed of the sampler (repeatable sampling).")
@click.option("--repetition-penalty", type=float, help="Divide the logits of tokens already in the prompt or output by this (> 1 repeats less; transformers' definition).")
@click.option("--presence-penalty", type=float, help="Lower the logits of tokens already generated by this, once (-2..2; the OpenAI API's definition).")
@click.option("--frequency-penalty", type=float, help="Lower the logits of tokens already generated by this per occurrence (-2..2; the OpenAI API's definition).")
@click.option("--stop", "stops", multiple=True, help="Stop where this text appears (repeatable); the output ends before it. Needs the artifact's tokenizer.")
@click.option("--ignore-eos", is_flag=True, help="Do not stop at EOS.")
@click.option("--prefill-chunk", type=int, help="Prefill the prompt in pieces of this many tokens.")
@click.option("--state-in", type=click.Path(dir_okay=False), help="Continue from a state snapshot file (--state-out): its tokens must begin the prompt, and only the rest is prefilled.")
@click.option("--state-out", type=click.Path(dir_okay=False), help="Save the state after the prompt to this file (safetensors), for a later --state-in (one prompt).")
@click.option("--stream", is_flag=True, help="Print text as it is generated (one prompt); with --json, one JSON line per token.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (with --stream: a JSON line per token, then that object).")
@click.option("--verify", is_flag=True, help="Check every file's SHA-256 against the manifest first.")
@click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads (default: all cores).")
@_BACKEND
@_PROVIDER
@_one_line_errors
@_CACHE
def generate(artifact_dir, prompts, prompt_ids, chat_message, system_message, template_kwargs, max_new_tokens, greedy, temperature, top_k, top_p, seed,
             repetition_penalty, presence_penalty, frequency_penalty, stops, ignore_eos, prefill_chunk, state_in, state_out, stream, as_json, verify,
             threads, backend, engine, plugins_lib, providers, cache):  # fmt: skip
    """Generate continuations of one or more prompts with an exported artifact, or the reply to a chat
    message (--chat, with the artifact's chat template).

    One prompt prints its text; several print one line each, `[i] "text"` (JSON-quoted, so a newline
    in a continuation cannot break the layout); without a tokenizer, token ids.
    """
    chat = _chat_messages(chat_message, system_message, template_kwargs, prompts or prompt_ids)
    if not prompts and not prompt_ids and chat is None:
        raise NemotronDeployError("give at least one --prompt TEXT or --prompt-ids 1,2,3, or --chat MESSAGE")
    inputs = [*prompts, *(_parse_ids(p) for p in prompt_ids)]
    if stream and len(inputs) > 1 and not as_json:
        raise NemotronDeployError("--stream prints one prompt as it grows; for several prompts use --stream --json (a JSON line per token) or drop --stream")
    penalties = dict(repetition_penalty=repetition_penalty, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
    sampling = _sampling(greedy, temperature, top_k, top_p, seed, penalties)
    require("generate", *_backend_extras(backend))
    from nemotron_deploy.runtime.session import Session

    session = Session(
        artifact_dir, backend=backend, providers=list(providers) or None, threads=threads, engine=engine, plugins=plugins_lib, verify=verify, cache=cache
    )
    if chat is not None:
        messages, kwargs = chat
        inputs = [session.chat_prompt(messages, **kwargs)]
    start = _prompt_state(session, inputs, prefill_chunk, state_in, state_out)
    streamer = _Streamer(session, as_json) if stream else None
    result = session.generate(inputs, max_new_tokens, sampling, ignore_eos, prefill_chunk, streamer, stop=stops,
                              on_text=streamer.text if streamer and session.tokenizer else None, start=start)  # fmt: skip
    _note_model_limit(session, inputs, result, max_new_tokens)
    if as_json:
        out = {"new_token_ids": result.new_token_ids, "finish_reasons": result.finish_reasons}
        if result.text is not None:
            out["text"] = result.text
        click.echo(json.dumps(out))
    elif stream:
        click.echo("")
    elif len(inputs) == 1:
        click.echo(result.text[0] if result.text is not None else ",".join(map(str, result.new_token_ids[0])))
    else:
        for i, ids in enumerate(result.new_token_ids):
            click.echo(f"[{i}] " + (json.dumps(result.text[i], ensure_ascii=False) if result.text is not None else ",".join(map(str, ids))))


def _prompt_state(session, inputs, prefill_chunk, state_in, state_out):
    """--state-in / --state-out -> the snapshot `generate` starts from (None: the prompt from the start).
    With --state-out the prompt is prefilled here (from --state-in's state if given) and its state saved."""
    if not (state_in or state_out):
        return None
    if len(inputs) != 1:
        raise NemotronDeployError("--state-in / --state-out go with one prompt")
    start = session.load_state(state_in) if state_in else None
    if state_out:
        start = session.snapshot(inputs[0], prefill_chunk, start=start)
        session.save_state(start, state_out)
    return start


def _chat_messages(message, system, template_kwargs, other_prompts) -> tuple[list[dict], dict] | None:
    """--chat / --system / --chat-template-kwargs -> (messages, template keywords), or None without --chat."""
    if message is None:
        if system is not None or template_kwargs is not None:
            raise NemotronDeployError("--system and --chat-template-kwargs go with --chat MESSAGE")
        return None
    if other_prompts:
        raise NemotronDeployError("--chat is one conversation: give it without --prompt / --prompt-ids")
    kwargs = {}
    if template_kwargs is not None:
        try:
            kwargs = json.loads(template_kwargs)
        except ValueError as e:
            raise NemotronDeployError(f"--chat-template-kwargs: not JSON ({e})") from None
        if not isinstance(kwargs, dict):
            raise NemotronDeployError('--chat-template-kwargs: expected a JSON object such as {"enable_thinking": false}')
    system_turn = [{"role": "system", "content": system}] if system is not None else []
    return [*system_turn, {"role": "user", "content": message}], kwargs


def _backend_extras(backend: str) -> tuple[str, ...]:
    return {"onnxruntime": ("onnxruntime",), "reference": ("export",)}.get(backend, ())


def _note_model_limit(session, inputs, result, max_new_tokens: int) -> None:
    """Say so when a sequence stopped at the model's length limit before --max-new-tokens."""
    for i, ids in enumerate(result.new_token_ids):
        if result.finish_reasons[i] == "length" and len(ids) < max_new_tokens:
            click.echo(f"note: prompt {i} stopped after {len(ids)} new tokens at the model's maximum of {session.max_length} tokens (max_position_embeddings)", err=True)


class _Streamer:
    """Text: the one prompt's text as it grows. JSON: one line per token, {"prompt", "token", "text"}.
    Called per token (`__call__`), then, with a tokenizer, with the text that token released (`text`)."""

    def __init__(self, session, as_json: bool):
        self.as_json = as_json
        self.has_text = session.tokenizer is not None
        self.tokens = {}

    def __call__(self, row: int, token: int) -> None:
        if self.has_text:
            self.tokens[row] = token  # printed with its text
        elif self.as_json:
            click.echo(json.dumps({"prompt": row, "token": token}))
        else:
            click.echo(f"{token},", nl=False)

    def text(self, row: int, piece: str) -> None:
        if self.as_json:
            click.echo(json.dumps({"prompt": row, "token": self.tokens[row], "text": piece}, ensure_ascii=False))
        else:
            click.echo(piece, nl=False)


@main.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("--prompt-len", default=128, show_default=True, type=click.IntRange(1))
@click.option("--new-tokens", default=32, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--past", "past_lengths", multiple=True, type=click.IntRange(1), help="Also time decode after this many tokens (repeatable).")
@click.option("--threads", type=int, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--verify", is_flag=True, help="Check every file's SHA-256 against the manifest first.")
@_BACKEND
@_PROVIDER
@_one_line_errors
@_CACHE
def bench(artifact_dir, prompt_len, new_tokens, batch, past_lengths, threads, as_json, verify, backend, engine, plugins_lib, providers, cache):
    """Prefill and decode throughput, peak memory, and decode against the memory-bandwidth floor."""
    require("bench", *_backend_extras(backend))
    from nemotron_deploy.runtime.backends import open_backend
    from nemotron_deploy.runtime.bench import run_bench
    from nemotron_deploy.runtime.artifact.manifest import read_manifest
    from nemotron_deploy.runtime.memory import PeakMemory

    manifest = read_manifest(artifact_dir)
    if verify:
        _verify(manifest)
    if prompt_len + new_tokens > manifest.model.max_position_embeddings:
        raise NemotronDeployError(f"--prompt-len + --new-tokens exceeds the model's maximum of {manifest.model.max_position_embeddings} tokens")
    memory = PeakMemory(pss=True).start()  # from before the open: the sessions' memory is part of the figure
    runner = open_backend(manifest, backend, list(providers) or None, threads, engine=engine, plugins=plugins_lib, cache=cache)
    result = run_bench(runner, manifest, prompt_len, new_tokens, batch, past_lengths, memory=memory)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"prefill  {result['prefill_tokens_per_s']:10.1f} tokens/s   (batch {batch} x {prompt_len})")
    click.echo(f"decode   {result['decode_tokens_per_s']:10.1f} tokens/s   (batch {batch}, {new_tokens} steps)")
    for past, rate in result["decode_tokens_per_s_at_past"].items():
        click.echo(f"decode   {rate:10.1f} tokens/s   after {past} tokens")
    precision = f"int{manifest.quantization['bits']} weights" if manifest.quantization else f"{manifest.dtype} weights"
    click.echo(f"weights  {result['decode_bytes_per_token'] / 1e6:10.1f} MB read per token ({precision})")
    click.echo(f"bandwidth {result['memory_bandwidth_gb_per_s']:.1f} GB/s -> floor {result['decode_floor_tokens_per_s']:.1f} tokens/s per sequence; "
               f"decode at {100 * result['decode_fraction_of_floor']:.0f}% of it")
    weights = f"{result['weights_mb']:.0f} MiB weights.data"
    pss = f"peak PSS {result['peak_pss_mb']:.0f} MiB ({result['peak_pss_x_weights']:.2f}x), " if "peak_pss_mb" in result else ""
    click.echo(f"memory   {pss}peak RSS {result['peak_rss_mb']:.0f} MiB ({result['peak_rss_x_weights']:.2f}x {weights}), "
               f"peak anonymous {result['peak_anon_mb']:.0f} MiB ({result['peak_anon_x_weights']:.2f}x) "
               "(the process, before the bandwidth test)")


DEMO_MARKER = ".nemotron-demo.json"  # what makes a directory the demo's own (reusable, replaceable)


@main.command()
@click.option("-o", "--output", "out_dir", default="nemotron-demo", show_default=True, help="Directory for the demo checkpoint and artifact.")
@click.option("--max-new-tokens", default=24, show_default=True, type=click.IntRange(1, 512))
@click.option("--seed", default=0, show_default=True, type=int)
@_one_line_errors
def demo(out_dir: str, max_new_tokens: int, seed: int) -> None:
    """Make a tiny random NemotronH checkpoint (every layer kind, with a tokenizer), export it to
    ONNX and generate from it on onnxruntime.

    Run again, it reuses its own earlier output (same seed) or replaces it whole (another seed); a
    directory it did not make is never touched. The output appears only when complete (Ctrl-C safe).
    """
    require("demo", "export", "onnxruntime")
    from pathlib import Path

    from nemotron_deploy.exporter.inspect import format_summary, inspect_checkpoint
    from nemotron_deploy.runtime.session import Session

    root = Path(out_dir)
    if _reusable_demo(root, seed):
        click.echo(f"reusing {root} (made by an earlier demo with seed {seed})")
    else:
        _make_demo(root, seed)
    checkpoint, artifact = root / "checkpoint", root / "onnx"
    click.echo(f"checkpoint: {checkpoint}")
    for label, value in format_summary(inspect_checkpoint(checkpoint)):
        click.echo(f"{label:>20}  {value}")
    click.echo(f"artifact:   {artifact}")
    session = Session(artifact)
    prompts = ["The runtime decodes", "Mamba layers"]
    result = session.generate(prompts, max_new_tokens, ignore_eos=True)
    for prompt, text, ids in zip(prompts, result.text, result.new_token_ids):
        click.echo(f"{prompt!r} -> {text!r}  {ids}")


def _reusable_demo(root, seed: int) -> bool:
    """True if `root` is a complete demo output of this seed; raises if it exists and is not the demo's."""
    if not root.exists():
        return False
    marker = root / DEMO_MARKER
    if not marker.is_file():
        raise NemotronDeployError(f"{root}: already exists and was not made by 'nemotron-deploy demo'; choose another -o (nothing was touched)")
    try:
        made = json.loads(marker.read_text())
    except (OSError, ValueError):
        made = {}
    return made.get("seed") == seed and (root / "onnx" / "manifest.json").is_file()


def _make_demo(root, seed: int) -> None:
    """Checkpoint + artifact into a staging directory, then renamed to `root` (replacing an earlier demo)."""
    import shutil

    from nemotron_deploy.exporter.onnx_export import export_artifact
    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint
    from nemotron_deploy.runtime.artifact.atomic import make_staging, new_directory

    previous = root.with_name(f".{root.name}.previous")
    with new_directory(root, make_staging(root)) as staging:
        checkpoint = write_random_checkpoint(staging / "checkpoint", seed=seed)
        click.echo(f"wrote a random checkpoint (seed {seed}); exporting it", err=True)
        export_artifact(checkpoint, staging / "onnx")
        (staging / DEMO_MARKER).write_text(json.dumps({"seed": seed}))
        if root.exists():  # our own earlier demo: swap, then delete it
            shutil.rmtree(previous, ignore_errors=True)
            root.rename(previous)
    shutil.rmtree(previous, ignore_errors=True)


@main.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@_one_line_errors
def verify(artifact_dir: str) -> None:
    """Check every file of an artifact against the SHA-256 its manifest records (engines included)."""
    from nemotron_deploy.runtime.artifact.manifest import read_manifest

    checked = _verify(read_manifest(artifact_dir))
    click.echo(f"ok: {checked} files match {artifact_dir}/manifest.json")


@main.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where to build it (default: $NEMOTRON_DEPLOY_CACHE, else beside the artifact when writable, else ~/.cache/nemotron-deploy).")
@_one_line_errors
def optimize(artifact_dir: str, cache_dir: str | None) -> None:
    """Build this machine's pre-packed weights cache of a quantized artifact ahead of its first open.

    Every later open on this machine, in any process, maps the packed weights from it (docs/export.md).
    Useful in a container build or before serving; the first open builds it otherwise.
    """
    require("optimize", "onnxruntime")
    from pathlib import Path

    from nemotron_deploy.runtime.artifact.manifest import WEIGHTS_FILE, read_manifest
    from nemotron_deploy.runtime.onnx_prepacked import CachePolicy, ensure_entry, graph_files, packs, stored_bytes

    manifest = read_manifest(artifact_dir)
    if manifest.plugins:
        raise NemotronDeployError(f"{manifest.path}: a '{manifest.target}' artifact runs its TensorRT engines; nothing to pre-pack for onnxruntime")
    if not packs(manifest, ["CPUExecutionProvider"]):
        click.echo(f"{manifest.path}: {manifest.dtype} weights are mapped as stored, nothing is pre-packed: no cache needed")
        return
    weights = next((f.bytes for f in manifest.files if f.name == WEIGHTS_FILE), 0)
    for graph_file in graph_files(manifest):
        model = ensure_entry(manifest, graph_file, CachePolicy(directory=Path(cache_dir) if cache_dir else None))
        if model is None:
            raise NemotronDeployError("the pre-packed weights cache is off (NEMOTRON_DEPLOY_CACHE=none); give --cache-dir")
        size = stored_bytes(model.parent)
        click.echo(f"{model.parent}: {size / 2**20:.0f} MiB on disk ({size / weights:.2f}x weights.data)")


def _verify(manifest) -> int:
    from nemotron_deploy.runtime.artifact.integrity import bytes_to_verify, verify_artifact

    try:
        from tqdm.auto import tqdm
    except ImportError:  # the core install has no tqdm: verify without a bar
        return verify_artifact(manifest)
    with tqdm(total=bytes_to_verify(manifest), desc="sha256", unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
        return verify_artifact(manifest, bar.update)


def _repository_options(fn):
    """Options shared by `triton` and `serve`: how the generate model runs inside the server."""
    for option in reversed([
        click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
                     help="Model instances, each a process with its own running batch."),
        click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True,
                     help="generate: sequences decoded together per instance (more wait). step: steps Triton may batch together."),
        click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
                     help="Runtime backend of the generate model.  [default: tensorrt when the artifact has engines, else onnxruntime]"),
        click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads per instance (default: all cores)."),
        click.option("--prefill-chunk", type=click.IntRange(1), default=256, show_default=True,
                     help="generate: prompt tokens per prefill call; running sequences decode between a long prompt's chunks."),
        click.option("--prefix-cache-mb", type=click.FloatRange(0), default=None,
                     help="generate: MiB per instance of state snapshots kept so that a prompt that begins with an earlier one "
                          "(a conversation's turns) is prefilled only from there; 0 turns it off.  "
                          "[default: min(1024, 1/16 of the serving machine's memory)]"),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


@main.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("-o", "--output", "out_dir", required=True, help="New model repository directory to write.")
@click.option("--kind", type=click.Choice(["generate", "step"]), default="generate", show_default=True,
              help="generate: our runtime in Triton's Python backend, streaming, continuous batching, TensorRT-LLM's request names. "
                   "step: the step graph for Triton's onnxruntime / tensorrt backend with implicit state (docs/triton.md).")
@_repository_options
@_one_line_errors
@_CACHE
def triton(artifact_dir, out_dir, kind, instances, max_batch, backend, threads, prefill_chunk, prefix_cache_mb, cache) -> None:
    """Write a Triton Inference Server model repository for an artifact."""
    require("triton", "triton")
    from nemotron_deploy.runtime.triton.repository import write_repository

    repo = write_repository(artifact_dir, out_dir, kind=kind, instances=instances, max_batch=max_batch, backend=backend, threads=threads,
                            prefill_chunk=prefill_chunk, cache=cache, prefix_cache_mb=prefix_cache_mb)  # fmt: skip
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    click.echo(f"wrote {repo}: {', '.join(models)}")
    if kind == "generate":
        click.echo(f"serve it: nemotron-deploy serve {artifact_dir}   (or tritonserver --model-repository={repo}, docs/triton.md)")
    elif (repo / "nemotron_step" / "1" / "model.plan").is_file():
        from nemotron_deploy.runtime.artifact.manifest import read_manifest

        built = read_manifest(artifact_dir).engines["tensorrt"].plugins or {}
        library = built.get("library") or "libnemotron_deploy_plugins.so"
        click.echo(f"serve it with Triton's tensorrt backend, loading the plugins: tritonserver --model-repository={repo} "
                   f"--backend-config=tensorrt,plugins={library}   (docs/triton.md; not run here)")  # fmt: skip
    else:
        click.echo(f"serve it with Triton's onnxruntime backend: tritonserver --model-repository={repo}   (docs/triton.md; not run here)")


@main.command()
@click.argument("artifact_dir", type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--openai-port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="The OpenAI-compatible endpoints (/v1/chat/completions, ...; docs/openai.md).")
@click.option("--served-model-name", default=None, help="The `model` OpenAI clients send (default: the artifact directory's name).")
@_repository_options
@_one_line_errors
@_CACHE
def serve(artifact_dir, host, http_port, grpc_port, metrics_port, openai_port, served_model_name, instances, max_batch, backend, threads, prefill_chunk,
          prefix_cache_mb, cache) -> None:  # fmt: skip
    """Serve an artifact from a real tritonserver (the nvidia-pytriton wheel's), with OpenAI-compatible
    endpoints beside it, until Ctrl-C.

    Builds a `generate` repository in a temporary directory; Triton's log goes to stderr.
    """
    require("serve", "triton")
    import shutil
    import signal
    from pathlib import Path

    from nemotron_deploy.runtime.openai_api.app import model_info
    from nemotron_deploy.runtime.openai_api.server import OpenAIServer
    from nemotron_deploy.runtime.triton.repository import write_repository
    from nemotron_deploy.runtime.triton.server import TritonServer, owned_temp_dir, remove_stale_temp_dirs

    def stop(signum, frame):
        raise KeyboardInterrupt

    # explicitly, SIGINT too: a shell starts background jobs with SIGINT ignored, and Python would then
    # never raise KeyboardInterrupt (uvicorn installs its own while it runs, and restores these)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    name = served_model_name or Path(artifact_dir).resolve().name
    info = model_info(artifact_dir, name)
    web = OpenAIServer(info, host, openai_port)  # checks the port before Triton starts
    remove_stale_temp_dirs()  # of servers killed before they could clean up
    tmp = owned_temp_dir("repository")
    try:
        repo = write_repository(artifact_dir, tmp / "repository", instances=instances, max_batch=max_batch, backend=backend,
                                threads=threads, prefill_chunk=prefill_chunk, cache=cache, prefix_cache_mb=prefix_cache_mb)  # fmt: skip
        server = TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, log_file="-")
        try:
            with server:
                e = server.endpoints
                click.echo(f"serving {artifact_dir}: gRPC {e.grpc_url}, HTTP http://{e.http_url}, metrics {e.metrics_url}; "
                           "models tensorrt_llm (ids)" + (" and ensemble (text)" if (repo / "ensemble").is_dir() else "") +
                           f"; OpenAI API http://{host}:{openai_port}/v1 (model '{name}'); Ctrl-C stops", err=True)  # fmt: skip
                code = web.run(e.grpc_url, server.process)  # until Ctrl-C / SIGTERM, or Triton exits
                if code is not None:
                    raise NemotronDeployError(f"tritonserver exited with status {code}")
        except KeyboardInterrupt:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo("stopped", err=True)


@main.group()
def plugins() -> None:
    """The TensorRT plugin library (Mamba2Core, MoeDispatch)."""


@plugins.command("build")
@click.option("-o", "--output", "out_dir", default="nemotron-plugins", show_default=True, help="Directory for the library (and its CMake build tree).")
@click.option("--cuda-arch", "cuda_arch", default=None, help="CUDA architectures, e.g. '90' or '80;86;89;90' (default: the four CI compiles).")
@click.option("--tensorrt-include", type=click.Path(file_okay=False), default=None, help="Directory holding NvInferRuntime.h (default: $TENSORRT_INCLUDE_DIR, a system install, or TensorRT 10.14's headers from PyPI).")
@click.option("--emulate", is_flag=True, help="Build the CPU emulation of the kernels (for tests without a GPU) instead of the CUDA library.")
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Show CMake's and the compilers' output.")
@_one_line_errors
def plugins_build(out_dir, cuda_arch, tensorrt_include, emulate, as_json, verbose) -> None:
    """Configure and compile the plugin library with CMake; prints the library's path (load it with
    `trtexec --dynamicPlugins=PATH`, IPluginRegistry::loadLibrary, or `build --plugins PATH`)."""
    from nemotron_deploy.plugins.build import DEFAULT_CUDA_ARCHITECTURES, build_plugins

    if not as_json:
        click.echo("building the plugin library (first build: about a minute) ...", err=True)
    built = build_plugins(
        out_dir, emulated=emulate, cuda_architectures=cuda_arch or DEFAULT_CUDA_ARCHITECTURES,
        tensorrt_include=tensorrt_include, verbose=verbose,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps({"library": str(built.library), "harness": str(built.harness), "emulated": built.emulated}))
    else:
        click.echo(str(built.library))



@main.group()
def cpp() -> None:
    """The C++ runtime (libnemotron_deploy_runtime.so, nemotron-generate): docs/cpp.md."""


@cpp.command("build")
@click.option("-o", "--output", "out_dir", default="nemotron-cpp", show_default=True, help="Directory for the library, the programs and the CMake build tree.")
@click.option("--tensorrt-include", type=click.Path(file_okay=False), default=None, help="Directory holding NvInferRuntime.h (found as for `plugins build`).")
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Show CMake's and the compiler's output.")
@_one_line_errors
def cpp_build(out_dir, tensorrt_include, as_json, verbose) -> None:
    """Configure and compile the C++ runtime library and the example program with CMake."""
    from nemotron_deploy.runtime.cpp.build import build_runtime

    if not as_json:
        click.echo("building the C++ runtime (about half a minute) ...", err=True)
    built = build_runtime(out_dir, tensorrt_include=tensorrt_include, verbose=verbose)
    paths = {"library": str(built.library), "example": str(built.example), "probe": str(built.probe), "include": str(built.include)}
    if as_json:
        click.echo(json.dumps(paths))
    else:
        click.echo(f"{built.library}\n{built.example}\nheaders: {built.include}")

if __name__ == "__main__":
    main()
