"""`nemotron-deploy` command line. It only parses arguments and calls library functions; heavy
imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import functools
import json
import sys

import click

from nemotron_deploy.runtime.errors import NemotronDeployError


def _one_line_errors(fn):
    """Bad input becomes `error: <message>` on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NemotronDeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("-o", "--output", "out_dir", default="nemotron-demo", show_default=True, help="Where to write the demo checkpoint.")
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--seed", default=0, show_default=True, type=int)
@_one_line_errors
def demo(out_dir: str, max_new_tokens: int, seed: int) -> None:
    """Write a tiny random NemotronH checkpoint (every layer kind), inspect it and decode greedily."""
    from nemotron_deploy.exporter.checkpoint import load_model
    from nemotron_deploy.exporter.inspect import format_summary, inspect_checkpoint
    from nemotron_deploy.exporter.random_checkpoint import write_random_checkpoint
    from nemotron_deploy.exporter.torch_decode import greedy_decode

    path = write_random_checkpoint(out_dir, seed=seed)
    click.echo(f"wrote a random checkpoint to {path}")
    for label, value in format_summary(inspect_checkpoint(path)):
        click.echo(f"{label:>20}  {value}")
    model = load_model(path)
    prompts = [[1, 17, 42, 99, 7], [1, 5]]
    for prompt, new in zip(prompts, greedy_decode(model, prompts, max_new_tokens)):
        click.echo(f"prompt {prompt} -> {new}")


if __name__ == "__main__":
    main()
