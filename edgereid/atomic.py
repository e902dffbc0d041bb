"""Writing files so that a crash or a kill never leaves a half-written one in place of a good one: everything is
written to a temporary file beside its target, flushed to disk, and renamed over the target in one step."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once at import, before any thread could create a file.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[Any]]:
    """A binary file to write; it replaces ``path`` only once the block has completed without an exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            # mkstemp makes the file private (0600); a published file gets the mode any new file would.
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as file:
        file.write(text.encode("utf-8"))


def atomic_write_figure(figure: Any, path: Path, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG at ``path``, written atomically (a viewer never reads half a picture), and
    closed. The canvas is the figure's fixed size (no tight bounding box), so every chart has the same pixels."""
    import io

    from matplotlib import pyplot as plt

    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    atomic_write_bytes(buffer.getvalue(), path)
    return path


def atomic_copy(source: Path, target: Path) -> None:
    with atomic_file(target) as file, source.open("rb") as original:
        shutil.copyfileobj(original, file)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    with atomic_file(path) as file:
        file.write(data)


def staging_directory(target: Path) -> Path:
    """A new private directory beside ``target`` to build its next version in, for :func:`publish_directory`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{_STAGING}", dir=target.parent))


def remove_abandoned(target: Path) -> list[Path]:
    """Undo what a killed writer of ``target`` left beside it: a retired version whose replacement never arrived
    is put back, and staging and retired directories are removed. Returns what was removed.

    Only safe while holding ``target``'s write lock (``edgereid.locking.exclusive``): a live writer's staging
    directory looks exactly like an abandoned one.
    """
    retired = sorted(target.parent.glob(f".{target.name}{_RETIRED}*"))
    if not target.exists():
        for directory in retired:
            if (directory / target.name).exists():
                os.replace(directory / target.name, target)
                break
    removed = [*sorted(target.parent.glob(f".{target.name}{_STAGING}*")), *retired]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return removed


def remove_partial_files(directory: Path) -> list[Path]:
    """Remove the temporary files that writes into ``directory`` killed before their rename left there (what
    :func:`atomic_file` names ``.NAME.*.tmp``); returns them. Only safe while holding ``directory``'s write lock."""
    partial = sorted(path for path in directory.glob(".*.tmp") if path.is_file())
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


_STAGING = ".staging-"
_RETIRED = ".old-"


def publish_directory(staging: Path, target: Path) -> None:
    """Move a completely built directory to ``target`` with renames, so a reader never sees half of it; an existing
    ``target`` is moved aside first, put back if the move fails, and removed once the new one is in place."""
    # Staging directories come from mkdtemp (0700); the published one gets the mode any new directory would.
    os.chmod(staging, 0o777 & ~_UMASK)
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}{_RETIRED}", dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / target.name, target)
        os.rmdir(retired)
        raise
    shutil.rmtree(retired, ignore_errors=True)
