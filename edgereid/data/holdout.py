"""Cut a query/gallery test protocol out of a train-only data set, identity-disjoint from what is trained on.

With the defaults on Market-1501's `bounding_box_train` this is the `market1501-holdout` protocol: the 751
identities sorted numerically, the last 251 held out, and within them the first image (by file name) of each
(identity, camera) pair a query, every other image a gallery image.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from edgereid.data.records import ImageRecord, ReIDDataset
from edgereid.errors import ConfigError

MARKET1501_HOLDOUT_TEST_IDS = 251


def make_holdout(
    records: list[ImageRecord],
    *,
    num_test_ids: int | None = None,
    test_fraction: float | None = None,
    seed: int | None = None,
    name: str = "holdout",
    root: Path | None = None,
) -> ReIDDataset:
    """Split ``records`` by identity into train and a query/gallery test set.

    Give either ``num_test_ids`` or ``test_fraction``. Without ``seed`` the highest-numbered identities are held
    out (the published protocol); with a seed, a seeded random choice of identities is.
    """
    identities = sorted({r.pid for r in records})
    num_test = _number_of_test_ids(len(identities), num_test_ids, test_fraction)
    if seed is None:
        test_ids = set(identities[len(identities) - num_test :])
    else:
        test_ids = set(random.Random(seed).sample(identities, num_test))
    train = [r for r in records if r.pid not in test_ids]
    query, gallery = split_first_per_key([r for r in records if r.pid in test_ids], lambda r: (r.pid, r.camid))
    return ReIDDataset(name, root or _common_root(records), train, query, gallery)


def _number_of_test_ids(num_ids: int, num_test_ids: int | None, test_fraction: float | None) -> int:
    if (num_test_ids is None) == (test_fraction is None):
        raise ConfigError("holdout: give exactly one of num_test_ids and test_fraction")
    if test_fraction is not None:
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"holdout: test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        num_test_ids = round(num_ids * test_fraction)
    assert num_test_ids is not None
    if not 1 <= num_test_ids < num_ids:
        raise ConfigError(
            f"holdout: num_test_ids must be between 1 and {num_ids - 1} (the data set has {num_ids} "
            f"identities), got {num_test_ids}"
        )
    return num_test_ids


def _common_root(records: list[ImageRecord]) -> Path:
    return records[0].path.parent if records else Path(".")


def split_first_per_key(
    records: list[ImageRecord], key: Callable[[ImageRecord], object]
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Query = the first record (by file name) for each key; gallery = every other record."""
    seen: set[object] = set()
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for record in sorted(records, key=lambda r: (r.path.name, str(r.path))):
        k = key(record)
        if k in seen:
            gallery.append(record)
        else:
            seen.add(k)
            query.append(record)
    return query, gallery
