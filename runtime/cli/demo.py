"""`demo`: a small random checkpoint exported and generated from, on a fresh machine, in one command."""

from __future__ import annotations

import json

import click

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.cli.common import one_line_errors, require

DEMO_MARKER = ".nemotron-demo.json"  # what makes a directory the demo's own (reusable, replaceable)


@click.command()
@click.option(
    "-o", "--output", "out_dir", default="nemotron-demo", show_default=True, help="Directory for the demo checkpoint and artifact."
)
@click.option("--max-new-tokens", default=24, show_default=True, type=click.IntRange(1, 512))
@click.option("--seed", default=0, show_default=True, type=int)
@one_line_errors
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
        raise NemotronDeployError(
            f"{root}: already exists and was not made by 'nemotron-deploy demo'; choose another -o (nothing was touched)"
        )
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


COMMANDS = (demo,)  # the commands this module adds to `nemotron-deploy`
