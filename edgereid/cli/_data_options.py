"""The options that choose which data set a command reads instead of the recipe's (or the bundle's recorded) one,
shared by ``edgereid eval``, ``edgereid verify`` and ``edgereid export``: ``--format``, reader options, and a holdout
cut from a train-only data set — as ``edgereid data info`` takes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgereid.cli._output import parse_options

if TYPE_CHECKING:
    from edgereid.data.selection import DataSelection

F = TypeVar("F", bound=Callable[..., Any])


def data_selection_options(*option_names: str) -> Callable[[F], F]:
    """Click options ``--format``, the reader options (named ``option_names``, e.g. ``-o``, ``--option``,
    ``--reader-option``), ``--holdout-ids`` and ``--holdout-seed``; the command gets them as ``data_format``,
    ``data_options`` (KEY=VALUE strings), ``holdout_ids`` and ``holdout_seed``, which :func:`data_selection` turns
    into one :class:`~edgereid.data.selection.DataSelection`."""

    def decorate(command: F) -> F:
        decorators = [
            click.option("--format", "data_format",
                         help="Data set format (default: the recipe's, or detected); drops the recipe's reader "
                              "options and holdout."),
            click.option(*option_names, "data_options", multiple=True, metavar="KEY=VALUE",
                         help="A reader option of the data set (repeatable), e.g. camera_regex='c(?P<cam>\\d+)' for "
                              "the folder format; replaces the recipe's reader options."),
            click.option("--holdout-ids", type=int,
                         help="Cut a query/gallery protocol from the data set's train split, holding out N identities."),
            click.option("--holdout-seed", type=int, help="With --holdout-ids: choose them at random with this seed."),
        ]
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def data_selection(
    data_root: Path | None,
    data_format: str | None,
    data_options: tuple[str, ...],
    holdout_ids: int | None,
    holdout_seed: int | None,
) -> DataSelection:
    """The data a command reads instead of the recorded one: its ``--data`` root and the options of
    :func:`data_selection_options`; a bad one is a ConfigError (one line)."""
    from edgereid.data.selection import DataSelection

    return DataSelection(root=data_root, format=data_format, options=parse_options(data_options),
                         holdout_ids=holdout_ids, holdout_seed=holdout_seed)
