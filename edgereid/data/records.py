"""The records every reader produces: one image with its identity and camera, grouped into splits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a ReID data set.

    ``pid`` is the identity as the data set names it (not remapped); ``camid`` is a 0-based camera index.
    """

    path: Path
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """A data set cut into a training split and a query/gallery test protocol (either side may be empty)."""

    name: str
    root: Path
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        records: list[ImageRecord] = getattr(self, name)
        return records

    def num_ids(self, split: str) -> int:
        return len({r.pid for r in self.split(split)})

    def num_cams(self, split: str) -> int:
        return len({r.camid for r in self.split(split)})


def images_per_identity(records: list[ImageRecord]) -> Counter[int]:
    return Counter(r.pid for r in records)
