"""What every reader shares: listing images, parsing names with a clear error, and warnings about the splits."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgereid.data.records import ImageRecord, images_per_identity
from edgereid.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class DatasetWarning(UserWarning):
    """Something about a data set that training or evaluation can live with but the user should know."""


@dataclass(frozen=True)
class NamePattern:
    """A file-name convention: a regex with the groups ``pid`` and ``cam``, how to show it, and an example."""

    name: str
    regex: re.Pattern[str]
    shown_as: str
    example: str
    # Converts the camera as written in the name into a 0-based index.
    camera_offset: int = 1

    def parse(self, file_name: str) -> tuple[int, int] | None:
        match = self.regex.match(file_name)
        if match is None:
            return None
        return int(match["pid"]), int(match["cam"]) - self.camera_offset


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_image_names(
    directory: Path,
    pattern: NamePattern,
    *,
    skip_pids: Iterable[int] = (),
    allow_empty: bool = False,
) -> list[ImageRecord]:
    """One record per image in ``directory``, named by ``pattern``; any name that does not parse is an error."""
    if not directory.is_dir():
        raise DataError(f"expected the directory '{directory}', which does not exist")
    skipped = set(skip_pids)
    records: list[ImageRecord] = []
    unparsable: list[str] = []
    images = list_images(directory)
    for path in images:
        parsed = pattern.parse(path.name)
        if parsed is None:
            unparsable.append(path.name)
            continue
        pid, camid = parsed
        if camid < 0:
            unparsable.append(path.name)
        elif pid not in skipped:
            records.append(ImageRecord(path, pid, camid))
    if unparsable:
        shown = ", ".join(f"'{name}'" for name in unparsable[:3])
        raise DataError(
            f"{len(unparsable)} of {len(images)} images in '{directory}' do not follow the {pattern.name} naming "
            f"{pattern.shown_as} (e.g. {shown}); expected names like '{pattern.example}'"
        )
    if not records and not allow_empty:
        raise DataError(f"'{directory}' holds no images named like '{pattern.example}'; expected at least one")
    return records


def warn_single_image_identities(records: list[ImageRecord], where: str) -> None:
    """Triplet mining needs two images of an identity; say how many have only one instead of failing later."""
    singles = sorted(pid for pid, count in images_per_identity(records).items() if count == 1)
    if singles:
        shown = ", ".join(str(pid) for pid in singles[:5])
        warnings.warn(
            f"{len(singles)} identities in {where} have a single image (e.g. {shown}); the P×K sampler repeats "
            "their image, so they add no positive pairs to metric losses",
            DatasetWarning,
            stacklevel=3,
        )


def remap_to_index(names: Iterable[str]) -> dict[str, int]:
    """Stable integer identities for data sets that name identities with strings."""
    unique = sorted(set(names))
    if all(name.isdigit() for name in unique):
        return {name: int(name) for name in unique}
    return {name: index for index, name in enumerate(unique)}
