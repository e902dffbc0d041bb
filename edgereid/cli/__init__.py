"""The `edgereid` command: a thin Click layer over the package's Python API.

Shell completion (Click's own): add `eval "$(_EDGEREID_COMPLETE=bash_source edgereid)"` to ~/.bashrc
(zsh: `zsh_source`, fish: `fish_source`).
"""

from __future__ import annotations

import warnings
from typing import Any

import click
from rich.markup import escape

from edgereid import __version__
from edgereid.cli._output import console, error_console
from edgereid.errors import EdgeReIDError


class _ReportingGroup(click.Group):
    """Turns every `EdgeReIDError` into one red line and the error's exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeReIDError as error:
            error_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            ctx.exit(error.exit_code)


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    error_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


@click.group(cls=_ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgereid")
def cli() -> None:
    """edgereid: ReID models from training to a verified INT8 engine on an edge device."""
    warnings.showwarning = _show_warning


def _register_commands() -> None:
    from edgereid.cli.bench import bench_command
    from edgereid.cli.build import build_command
    from edgereid.cli.data import data
    from edgereid.cli.demo import demo
    from edgereid.cli.export import export_command
    from edgereid.cli.gallery import gallery, search_command
    from edgereid.cli.import_ import import_group
    from edgereid.cli.report import report_command
    from edgereid.cli.train import eval_command, train_command
    from edgereid.cli.verify import verify_command

    # In the order of the path: data → train → eval → export → build → verify → gallery/search → bench → report.
    for command in (data, demo, import_group, train_command, eval_command, export_command, build_command, verify_command,
                    gallery, search_command, bench_command, report_command):
        cli.add_command(command)


_register_commands()


def main() -> None:
    cli(prog_name="edgereid")


__all__ = ["cli", "console", "main"]
