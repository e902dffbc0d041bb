"""Where the CLI writes: rich consoles for people, plain JSON on stdout with --json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console()
error_console = Console(stderr=True)


def print_json(payload: Any) -> None:
    # Plain print, not rich: JSON on stdout must stay machine-readable whatever the terminal.
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def format_delta(delta: float, interval: list[float] | None, decimals: int = 2) -> str:
    """A ΔmAP in points with its 95 % interval where there is one: ``-0.42 [-0.95, +0.10]``."""
    text = f"{delta:+.{decimals}f}"
    return text if interval is None else f"{text} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def print_evaluation_warnings(entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Each precision's warning that its queries were too few to judge its mAP budget."""
    for precision, entry in entries.items():
        if entry.get("evaluation_warning"):
            console.print(f"[yellow]{precision}: {escape(entry['evaluation_warning'])}[/]")


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs from the command line, values read as YAML scalars (so 3 is an int, true a bool)."""
    import yaml

    from edgereid.errors import ConfigError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} is not KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def require_extra(module: str, extra: str, command: str) -> None:
    """Fail with the install command when an optional dependency of ``command`` is missing."""
    import importlib.util

    from edgereid.errors import EdgeReIDError

    if importlib.util.find_spec(module) is None:
        raise EdgeReIDError(
            f"`edgereid {command}` needs {module}, which is not installed here (the base install is the on-device "
            f"runtime); install it with: pip install 'edgereid[{extra}]'"
        )
