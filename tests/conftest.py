from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# pytest-xdist runs one worker per core: each worker's torch (and the processes it starts) must use one thread, or
# the workers' thread pools fight over the cores and every test runs several times slower.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGEREID_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real research data beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set EDGEREID_SHARED_DATA to its location)")
    return SHARED_DATA


def write_image(path: Path, color: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (16, 32)) -> Path:
    """A tiny valid JPEG; ``size`` is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), color, dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def write_images(directory: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        write_image(directory / name, color=(index * 7 % 256, 80, 160))


_HOLD_LOCK = """
import sys
from edgereid.locking import exclusive
with exclusive(sys.argv[1], "another writer"):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def lock_held_elsewhere(target: Path) -> Iterator[None]:
    """``target``'s write lock held by another process for the block, as a concurrent writer would hold it (this
    process's own nested locks are re-entrant, so a lock taken here would not stand for another writer)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(target)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
