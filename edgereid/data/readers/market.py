"""Market-1501 layout (bounding_box_train/, query/, bounding_box_test/) with Market, DukeMTMC-reID or MSMT17 names."""

from __future__ import annotations

import re
from pathlib import Path

from edgereid.data.holdout import MARKET1501_HOLDOUT_TEST_IDS, make_holdout
from edgereid.data.readers._common import (
    NamePattern,
    list_images,
    parse_image_names,
    warn_single_image_identities,
)
from edgereid.data.records import ReIDDataset
from edgereid.data.registry import register_reader, require_directory
from edgereid.errors import ConfigError, DataError

MARKET_NAMES = NamePattern(
    "Market-1501",
    re.compile(r"^(?P<pid>-?\d+)_c(?P<cam>\d)s\d_\d{6}_\d{2}\."),
    "PPPP_cCsS_FFFFFF_BB.jpg",
    "0002_c1s1_000451_03.jpg",
)
DUKE_NAMES = NamePattern(
    "DukeMTMC-reID", re.compile(r"^(?P<pid>\d+)_c(?P<cam>\d+)_f\d+\."), "PPPP_cC_fFFFFFFF.jpg", "0001_c2_f0046182.jpg"
)
MSMT17_NAMES = NamePattern(
    "MSMT17",
    re.compile(r"^(?P<pid>\d+)_\d+_(?P<cam>\d+)_"),
    "PPPP_NNN_CC_DATE_FFFF_B.jpg",
    "0000_000_01_0303morning_0015_0.jpg",
)
NAMINGS = {"market": MARKET_NAMES, "duke": DUKE_NAMES, "msmt17": MSMT17_NAMES}

SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# Market-1501 marks junk detections with identity -1; FastReID and torchreid drop them.
JUNK_PID = -1


def _looks_like_market(root: Path) -> bool:
    return (root / SPLIT_DIRS["train"]).is_dir() or (root / SPLIT_DIRS["query"]).is_dir()


@register_reader(
    "market1501",
    description="Market-1501 layout; Market, DukeMTMC-reID or MSMT17 file names (naming=auto|market|duke|msmt17)",
    looks_like=_looks_like_market,
)
def read_market1501(root: Path, naming: str = "auto") -> ReIDDataset:
    """Read the splits present under ``root``; a train-only root (no query/) gives empty query and gallery."""
    require_directory(root, "Market-1501 data set root")
    present = {split: root / d for split, d in SPLIT_DIRS.items() if (root / d).is_dir()}
    if not present:
        raise DataError(
            f"'{root}' is not in the Market-1501 layout: expected the sub-folders "
            f"{', '.join(d + '/' for d in SPLIT_DIRS.values())} (found: {_listing(root)})"
        )
    if ("query" in present) != ("gallery" in present):
        missing = SPLIT_DIRS["gallery"] if "query" in present else SPLIT_DIRS["query"]
        raise DataError(f"'{root}' has a query/gallery protocol with '{missing}/' missing; expected both")
    pattern = _naming(naming, present)
    dataset = ReIDDataset("market1501", root)
    for split, directory in present.items():
        setattr(dataset, split, parse_image_names(directory, pattern, skip_pids=(JUNK_PID,)))
    if dataset.train:
        warn_single_image_identities(dataset.train, f"'{present['train']}'")
    return dataset


@register_reader(
    "market1501-holdout",
    description="the market1501-holdout protocol: bounding_box_train/ cut into 500 train and 251 test identities",
)
def read_market1501_holdout(
    root: Path, naming: str = "auto", num_test_ids: int = MARKET1501_HOLDOUT_TEST_IDS, seed: int | None = None
) -> ReIDDataset:
    full = read_market1501(root, naming=naming)
    if not full.train:
        raise DataError(f"'{root}' has no {SPLIT_DIRS['train']}/ to cut the holdout protocol from")
    return make_holdout(full.train, num_test_ids=num_test_ids, seed=seed, name="market1501-holdout", root=root)


def _naming(naming: str, present: dict[str, Path]) -> NamePattern:
    if naming != "auto":
        if naming not in NAMINGS:
            raise ConfigError(f"unknown naming {naming!r}; expected one of auto, {', '.join(NAMINGS)}")
        return NAMINGS[naming]
    for directory in present.values():
        images = list_images(directory)
        if images:
            first = images[0].name
            for pattern in NAMINGS.values():
                if pattern.parse(first) is not None:
                    return pattern
            raise DataError(
                f"cannot tell the naming of '{directory / first}'; expected Market-1501 ('{MARKET_NAMES.example}'), "
                f"DukeMTMC-reID ('{DUKE_NAMES.example}') or MSMT17 ('{MSMT17_NAMES.example}') names"
            )
    raise DataError(f"no images in {', '.join(str(d) for d in present.values())}; expected Market-1501 images")


def _listing(root: Path) -> str:
    return ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
