"""CUHK03 (labeled) as shipped in shared/data: a flat folder of PPPP_KK.jpg, KK 00–04 camera A, 05–09 camera B.

It serves as a cross-domain test set: query = the first image of each identity on each camera, gallery = the rest.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgereid.data.holdout import split_first_per_key
from edgereid.data.readers._common import NamePattern, list_images, parse_image_names
from edgereid.data.records import ImageRecord, ReIDDataset
from edgereid.data.registry import register_reader, require_directory
from edgereid.errors import ConfigError

IMAGES_PER_CAMERA = 5


class _Cuhk03Names(NamePattern):
    def parse(self, file_name: str) -> tuple[int, int] | None:
        match = self.regex.match(file_name)
        if match is None:
            return None
        return int(match["pid"]), int(match["cam"]) // IMAGES_PER_CAMERA


CUHK03_NAMES = _Cuhk03Names("CUHK03", re.compile(r"^(?P<pid>\d{4})_(?P<cam>\d{2})\."), "PPPP_KK.jpg", "0000_05.jpg")


def _looks_like_cuhk03(root: Path) -> bool:
    images = list_images(root)
    return bool(images) and CUHK03_NAMES.parse(images[0].name) is not None


@register_reader(
    "cuhk03",
    description="CUHK03 flat folder PPPP_KK.jpg (KK<05 camera A); protocol=test (query/gallery) or train",
    looks_like=_looks_like_cuhk03,
)
def read_cuhk03(root: Path, protocol: str = "test") -> ReIDDataset:
    require_directory(root, "CUHK03 data set root")
    records: list[ImageRecord] = parse_image_names(root, CUHK03_NAMES)
    if protocol == "train":
        return ReIDDataset("cuhk03", root, train=records)
    if protocol != "test":
        raise ConfigError(f"cuhk03: unknown protocol {protocol!r}; expected 'test' or 'train'")
    query, gallery = split_first_per_key(records, lambda r: (r.pid, r.camid))
    return ReIDDataset("cuhk03", root, query=query, gallery=gallery)
