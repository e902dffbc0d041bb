"""What is in a data set: identities, cameras, images per split, image sizes, unreadable images."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from edgereid.data.images import decode_image
from edgereid.data.readers import DatasetWarning
from edgereid.data.records import SPLITS, ReIDDataset
from edgereid.errors import DataError


@dataclass
class SplitInfo:
    images: int
    identities: int
    cameras: int
    single_image_identities: int
    # "HxW" → count, most common first
    image_sizes: dict[str, int]
    unreadable: list[str] = field(default_factory=list)


@dataclass
class DatasetInfo:
    name: str
    root: str
    splits: dict[str, SplitInfo]
    # Identities present in both train and the test protocol (should be 0: a leak otherwise).
    train_test_overlap: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_info(dataset: ReIDDataset, *, verify_images: bool = False, strict: bool = False) -> DatasetInfo:
    """Summarise ``dataset``; with ``verify_images`` every image is fully decoded to find corrupt ones.

    Unreadable images are counted with a warning, or raise `DataError` when ``strict``.
    """
    splits: dict[str, SplitInfo] = {}
    for split in SPLITS:
        records = dataset.split(split)
        if not records:
            continue
        sizes: Counter[str] = Counter()
        unreadable: list[str] = []
        for record in records:
            try:
                if verify_images:
                    height, width = decode_image(record.path).shape[:2]
                else:
                    with Image.open(record.path) as image:
                        width, height = image.size
            except (DataError, OSError, UnidentifiedImageError) as error:
                if strict:
                    raise DataError(f"cannot read image '{record.path}': {error}") from None
                unreadable.append(str(record.path))
                continue
            sizes[f"{height}x{width}"] += 1
        per_id = Counter(r.pid for r in records)
        splits[split] = SplitInfo(
            images=len(records),
            identities=len(per_id),
            cameras=len({r.camid for r in records}),
            single_image_identities=sum(1 for count in per_id.values() if count == 1),
            image_sizes=dict(sizes.most_common()),
            unreadable=unreadable,
        )
        if unreadable:
            warnings.warn(
                f"{len(unreadable)} of {len(records)} {split} images cannot be read and will be skipped "
                f"(e.g. '{unreadable[0]}'); `edgereid data info --strict` (strict=True) makes this an error",
                DatasetWarning,
                stacklevel=2,
            )
    train_ids = {r.pid for r in dataset.train}
    test_ids = {r.pid for r in dataset.query} | {r.pid for r in dataset.gallery}
    # Market-style distractors (pid 0) may legitimately sit in both; they are not a leak.
    overlap = len((train_ids & test_ids) - {0}) if dataset.name.startswith("market") else len(train_ids & test_ids)
    return DatasetInfo(dataset.name, str(dataset.root), splits, overlap)
