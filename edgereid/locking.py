"""Writers of one file or directory exclude each other: an advisory lock (filelock, ``flock`` on POSIX) held for
a whole read-modify-write, so two processes that update the same gallery, bundle destination or run directory
take turns instead of overwriting each other's work. The lock is re-entrant within a thread. Readers take no lock:
files are replaced atomically (``edgereid.atomic``); a directory published by two renames can be caught between
them, so a reader that finds one damaged reads it again under the lock (``Gallery.load``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from edgereid.errors import EdgeReIDError

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENVIRONMENT = "EDGEREID_LOCK_TIMEOUT"


class LockTimeoutError(EdgeReIDError):
    """Another process held the lock on a file or directory for longer than the caller was willing to wait."""

    exit_code = 3


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: beside it, so it needs no write access anywhere else and survives the
    target's replacement by rename (a lock inside a directory published by rename would be swapped away)."""
    return target.parent / f".{target.name}.lock"


def lock_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENVIRONMENT)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise EdgeReIDError(f"{TIMEOUT_ENVIRONMENT}={value!r} is not a number of seconds") from None
    if not seconds >= 0:
        raise EdgeReIDError(f"{TIMEOUT_ENVIRONMENT}={value!r}: expected a number of seconds >= 0")
    return seconds


@contextmanager
def exclusive(target: str | Path, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the write lock of ``target`` (a file or directory, existing or not) for the block.

    Waits up to ``timeout`` seconds (default: ``EDGEREID_LOCK_TIMEOUT`` or 600) for another writer to finish, then
    raises ``LockTimeoutError`` naming ``what`` and the lock file. The lock is released when the block ends or the
    process dies, so a killed writer never leaves the target locked.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    wait = lock_timeout() if timeout is None else timeout
    # One lock object per file in this process (filelock's singleton), counted: a process that holds a target's lock
    # (a service that owns its gallery) can call code that takes it again; other threads and processes wait.
    lock = FileLock(path, is_singleton=True)
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        waited = f", held for over {wait:g} s" if wait > 0 else ""
        remedy = f"wait for it to finish, or raise {TIMEOUT_ENVIRONMENT}" if timeout is None else "wait for it to finish"
        raise LockTimeoutError(
            f"{what} '{target}' is being written by another process (lock '{path}'{waited}); {remedy}"
        ) from None
    try:
        yield
    finally:
        lock.release()
