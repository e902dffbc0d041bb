"""The vehicle ReID set in shared/data: train/ and test/ of CLASS_NNNN_camC.jpg (identity = CLASS_NNNN).

Each test identity is seen once per camera, so the protocol takes the first image (by file name) of each
identity as its query and the others as gallery images.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgereid.data.holdout import split_first_per_key
from edgereid.data.readers._common import list_images, remap_to_index, warn_single_image_identities
from edgereid.data.records import ImageRecord, ReIDDataset
from edgereid.data.registry import register_reader, require_directory
from edgereid.errors import DataError

VEHICLE_NAME = re.compile(r"^(?P<identity>[A-Za-z]+_\d+)_cam(?P<cam>\d+)\.")
EXAMPLE = "car_0001_cam1.jpg"


def _looks_like_vehicle(root: Path) -> bool:
    train = root / "train"
    if not train.is_dir():
        return False
    images = list_images(train)
    return bool(images) and VEHICLE_NAME.match(images[0].name) is not None


@register_reader(
    "vehicle-reid",
    description="vehicle set: train/ and test/ of CLASS_NNNN_camC.jpg",
    looks_like=_looks_like_vehicle,
)
def read_vehicle_reid(root: Path) -> ReIDDataset:
    require_directory(root, "vehicle-reid data set root")
    parsed: dict[str, list[tuple[Path, str, int]]] = {}
    for split in ("train", "test"):
        directory = root / split
        if not directory.is_dir():
            raise DataError(f"'{root}' is not in the vehicle-reid layout: expected the sub-folder '{split}/'")
        parsed[split] = _parse(directory)
    # One index over both splits keeps an identity's integer id stable whichever split it is read from.
    ids = remap_to_index(identity for entries in parsed.values() for _, identity, _ in entries)
    train = [ImageRecord(path, ids[identity], cam) for path, identity, cam in parsed["train"]]
    test = [ImageRecord(path, ids[identity], cam) for path, identity, cam in parsed["test"]]
    warn_single_image_identities(train, f"'{root / 'train'}'")
    query, gallery = split_first_per_key(test, lambda r: r.pid)
    return ReIDDataset("vehicle-reid", root, train, query, gallery)


def _parse(directory: Path) -> list[tuple[Path, str, int]]:
    entries: list[tuple[Path, str, int]] = []
    bad: list[str] = []
    for path in list_images(directory):
        match = VEHICLE_NAME.match(path.name)
        if match is None or int(match["cam"]) < 1:
            bad.append(path.name)
        else:
            entries.append((path, match["identity"], int(match["cam"]) - 1))
    if bad:
        shown = ", ".join(f"'{n}'" for n in bad[:3])
        raise DataError(
            f"{len(bad)} images in '{directory}' do not follow the vehicle naming CLASS_NNNN_camC.jpg "
            f"(e.g. {shown}); expected names like '{EXAMPLE}'"
        )
    if not entries:
        raise DataError(f"'{directory}' holds no images; expected names like '{EXAMPLE}'")
    return entries
