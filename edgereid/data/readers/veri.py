"""VeRi-776: image_train/, image_query/, image_test/ with names like 0001_c001_00016450_0.jpg."""

from __future__ import annotations

import re
from pathlib import Path

from edgereid.data.readers._common import NamePattern, parse_image_names, warn_single_image_identities
from edgereid.data.records import ReIDDataset
from edgereid.data.registry import register_reader, require_directory
from edgereid.errors import DataError

VERI_NAMES = NamePattern(
    "VeRi-776", re.compile(r"^(?P<pid>\d+)_c(?P<cam>\d+)_"), "PPPP_cCCC_FFFFFFFF_N.jpg", "0001_c001_00016450_0.jpg"
)
SPLIT_DIRS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}


@register_reader(
    "veri776",
    description="VeRi-776 layout: image_train/, image_query/, image_test/",
    looks_like=lambda root: (root / "image_query").is_dir() or (root / "image_train").is_dir(),
)
def read_veri776(root: Path) -> ReIDDataset:
    require_directory(root, "VeRi-776 data set root")
    missing = [d + "/" for d in SPLIT_DIRS.values() if not (root / d).is_dir()]
    if missing:
        raise DataError(f"'{root}' is not a complete VeRi-776 layout: missing {', '.join(missing)}")
    splits = {split: parse_image_names(root / d, VERI_NAMES) for split, d in SPLIT_DIRS.items()}
    warn_single_image_identities(splits["train"], f"'{root / SPLIT_DIRS['train']}'")
    return ReIDDataset("veri776", root, **splits)
