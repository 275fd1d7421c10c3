"""`nemotron-deploy` command line, the top layer: the only place that imports everything. It only parses
arguments and calls library functions; heavy imports (torch, onnxruntime) happen inside the commands
that need them, after a check that names the extra to install when a package is missing.

One module per command group:
    export.py   inspect, export, build      checkpoint -> artifact -> TensorRT engines
    run.py      generate, bench, verify, optimize
    demo.py     demo
    serve.py    triton, serve
    native.py   plugins build, cpp build
"""

from __future__ import annotations

import sys
import warnings

import click

from nemotron_deploy.runtime.cli import demo, export, native, run, serve


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


for module in (export, run, demo, serve, native):
    for command in module.COMMANDS:
        main.add_command(command)
