"""Which images calibrate INT8: drawn from the TRAINING split only (never query or gallery, whose scores the
calibrated model is judged on), spread over identities and cameras, seeded so that a bundle can be rebuilt."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from edgereid.data.records import ImageRecord
from edgereid.errors import ConfigError

DEFAULT_CALIBRATION_IMAGES = 512
CALIBRATION_POLICY = "train-spread-v1"


def select_calibration_records(
    train: Sequence[ImageRecord], num_images: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0
) -> list[ImageRecord]:
    """Up to ``num_images`` train records, round-robin over (identity, camera) groups visited in a seeded random
    order, one image per group per round: every identity and camera appears before any appears twice.

    The result depends only on the records (sorted by path first), ``num_images`` and ``seed``.
    """
    if num_images < 1:
        raise ConfigError(f"the calibration set needs at least 1 image, got num_images={num_images}")
    if not train:
        raise ConfigError("the calibration set is drawn from the train split, which is empty")
    rng = random.Random(seed)
    groups: dict[tuple[int, int], list[ImageRecord]] = defaultdict(list)
    for record in sorted(train, key=lambda record: str(record.path)):
        groups[(record.pid, record.camid)].append(record)
    queues = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        queues.append(members)
    rng.shuffle(queues)
    chosen: list[ImageRecord] = []
    round_index = 0
    while len(chosen) < num_images:
        added = False
        for members in queues:
            if round_index < len(members):
                chosen.append(members[round_index])
                added = True
                if len(chosen) == num_images:
                    break
        if not added:
            break
        round_index += 1
    return chosen
