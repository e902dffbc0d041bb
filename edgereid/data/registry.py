"""A registry of data set readers, so recipes and the CLI name a format and get a `ReIDDataset`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereid.data.records import ReIDDataset
from edgereid.errors import ConfigError, DataError

Reader = Callable[..., ReIDDataset]


@dataclass(frozen=True)
class ReaderSpec:
    name: str
    read: Reader
    description: str
    # Lets `detect_format` recognise a root without being told its format.
    looks_like: Callable[[Path], bool] | None = None


_READERS: dict[str, ReaderSpec] = {}


def register_reader(
    name: str, *, description: str, looks_like: Callable[[Path], bool] | None = None
) -> Callable[[Reader], Reader]:
    def decorator(read: Reader) -> Reader:
        if name in _READERS:
            raise ValueError(f"a reader named {name!r} is already registered")
        _READERS[name] = ReaderSpec(name, read, description, looks_like)
        return read

    return decorator


def available_formats() -> dict[str, str]:
    """Format name → one-line description, for help texts."""
    _load_builtin_readers()
    return {name: spec.description for name, spec in sorted(_READERS.items())}


def detect_format(root: str | Path) -> str:
    root = require_directory(root, "data set root")
    _load_builtin_readers()
    matches = [spec.name for spec in _READERS.values() if spec.looks_like and spec.looks_like(root)]
    if not matches:
        entries = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
        raise DataError(
            f"cannot tell the layout of data set root '{root}' (it holds: {entries}); expected a Market-1501 "
            "layout (bounding_box_train/, query/, bounding_box_test/), VeRi-776 (image_train/, image_query/, "
            "image_test/), the vehicle-reid layout (train/, test/ with CLASS_NNNN_camC.jpg) or CUHK03 "
            f"(PPPP_KK.jpg); name the format explicitly, one of: {', '.join(available_formats())}"
        )
    return matches[0]


def load_dataset(root: str | Path, format: str | None = None, **options: Any) -> ReIDDataset:
    """Read the data set at ``root`` in ``format`` (detected from the layout when omitted)."""
    _load_builtin_readers()
    name = format or detect_format(root)
    spec = _READERS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(_READERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown data set format {name!r}{hint} (known: {', '.join(sorted(_READERS))})")
    return spec.read(Path(root), **options)


def require_directory(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist")
    if not path.is_dir():
        raise DataError(f"{what} '{path}' is not a directory")
    return path


def _load_builtin_readers() -> None:
    # Importing the package registers its readers; done lazily so the registry has no import cycle.
    import edgereid.data.readers  # noqa: F401
