"""Which images calibrate INT8, and the decoded calibration batch, cached.

Calibration images come from the TRAINING split only (never query or gallery, whose scores the calibrated model is
judged on). A :class:`CalibrationPolicy` (YAML in the repository's ``calibration/`` folder, or any file) says how
they are drawn: how many, at most how many per identity, spread over cameras or not, and the seed; see
``calibration/README.md``. The decoded batch is cached under a key of the policy, the chosen files (path, size,
modification time), the input size and the image count, so a second export of the same data decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgereid.data.images import decode_records, normalize_images
from edgereid.data.records import ImageRecord
from edgereid.errors import ConfigError, DataError

DEFAULT_CALIBRATION_IMAGES = 512
DEFAULT_POLICY = "train-spread-v1"
# The old name of the default policy, kept for callers that record it.
CALIBRATION_POLICY = DEFAULT_POLICY
# Fewer images than this cannot estimate activation ranges (let alone entropy histograms) that generalise.
MIN_CALIBRATION_IMAGES = 8
# The repository's calibration/ folder: shipped policies can be named without their path.
SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "calibration"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "edgereid" / "calibration"
# The splits a ReID data set has beside train; a policy naming one is refused, as it would leak the test set.
_TEST_SPLITS = ("query", "gallery", "test")


class CalibrationPolicy(BaseModel):
    """How the INT8 calibration set is drawn from the train split."""

    # strict: YAML has typed scalars, so `camera_balance: 0` or `images: 512.0` is a mistake to name, not coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    description: str = ""
    split: str = "train"
    images: int = Field(DEFAULT_CALIBRATION_IMAGES, ge=MIN_CALIBRATION_IMAGES)
    images_per_identity: int | None = Field(None, ge=1)
    camera_balance: bool = True
    augmentation: Literal["none"] = "none"
    seed: int = 0

    @field_validator("split")
    @classmethod
    def _train_only(cls, split: str) -> str:
        if split in _TEST_SPLITS:
            raise ValueError(
                f"calibration must not use the {split!r} split: the INT8 model is judged on query/gallery, and "
                "calibrating on them leaks the test set into the quantization ranges; use split: train"
            )
        if split != "train":
            raise ValueError(f"unknown split {split!r}; calibration images come from split: train")
        return split

    def digest(self) -> str:
        """sha256 of the policy's canonical JSON: what the calibration cache and the manifest key on."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()

    def select(self, train: Sequence[ImageRecord], num_images: int | None = None) -> list[ImageRecord]:
        """The policy's calibration records (``num_images`` overrides the policy's count)."""
        return select_calibration_records(
            self.eligible(train), self.images if num_images is None else num_images, self.seed
        )

    def eligible(self, train: Sequence[ImageRecord]) -> list[ImageRecord]:
        """The train records the draw may pick from: all of them, or ``images_per_identity`` per identity, taken
        round-robin over the identity's cameras with ``camera_balance`` and at random without (seeded)."""
        if self.images_per_identity is None:
            return list(train)
        rng = random.Random(self.seed)
        by_identity: dict[int, list[ImageRecord]] = defaultdict(list)
        for record in sorted(train, key=lambda record: str(record.path)):
            by_identity[record.pid].append(record)
        kept: list[ImageRecord] = []
        for pid in sorted(by_identity):
            members = by_identity[pid]
            rng.shuffle(members)
            if self.camera_balance:
                members = _round_robin(_groups(members, lambda record: record.camid, rng))
            kept.extend(members[: self.images_per_identity])
        return kept


def shipped_policies() -> list[str]:
    """Names of the policies in the repository's ``calibration/`` folder."""
    if not SHIPPED_POLICIES.is_dir():
        return []
    return sorted(path.stem for path in SHIPPED_POLICIES.glob("*.yaml"))


def load_calibration_policy(name_or_path: str | Path | None = None) -> CalibrationPolicy:
    """A shipped policy by name (default ``train-spread-v1``) or a YAML file; errors name the file and the key."""
    import yaml

    spec = DEFAULT_POLICY if name_or_path is None else str(name_or_path)
    path = Path(spec)
    if not path.is_file():
        shipped = SHIPPED_POLICIES / f"{spec}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"calibration policy {spec!r} is neither a file nor a shipped policy; shipped: "
                f"{', '.join(shipped_policies()) or 'none'}"
            )
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"calibration policy '{path}' cannot be read ({type(error).__name__}: {error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"calibration policy '{path}' is not a policy: it is not UTF-8 text") from None
    except yaml.YAMLError as error:
        # PyYAML's message spans lines (problem, then where): one line, as every edgereid error.
        problem = " ".join(str(error).split())
        raise ConfigError(f"calibration policy '{path}' is not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"calibration policy '{path}' must be a mapping of keys to values, not {type(raw).__name__}"
        )
    raw.setdefault("name", path.stem)
    try:
        return CalibrationPolicy.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"key '{'.'.join(str(part) for part in item['loc'])}': {item['msg']}" for item in error.errors()
        )
        raise ConfigError(f"calibration policy '{path}': {problems}") from None


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
    ordered = sorted(train, key=lambda record: str(record.path))
    return _round_robin(_groups(ordered, lambda record: (record.pid, record.camid), rng))[:num_images]


def select_heldout_records(
    train: Sequence[ImageRecord], num_images: int, seed: int, images_per_identity: int
) -> list[ImageRecord]:
    """Up to ``num_images`` train records that form a query/gallery protocol: identities in a seeded random order,
    each with up to ``images_per_identity`` of its images spread over its cameras (so each camera's first image can
    be a query and the others its matches), each identity whole or not at all. Identities seen by one camera only
    are skipped: none of their queries could have a valid match.

    A draw spread over every (identity, camera) — the calibration's — would not do: with more such groups than
    ``num_images`` (Market-1501's 500 train identities have 2,140) it takes one image per group, every image
    becomes a query and the gallery is empty.
    """
    rng = random.Random(seed)
    by_identity: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in sorted(train, key=lambda record: str(record.path)):
        by_identity[record.pid].append(record)
    identities = sorted(by_identity)
    rng.shuffle(identities)
    chosen: list[ImageRecord] = []
    for pid in identities:
        spread = _round_robin(_groups(by_identity[pid], lambda record: record.camid, rng))[:images_per_identity]
        if len(chosen) + len(spread) > num_images:
            break
        if len({record.camid for record in spread}) >= 2:
            chosen.extend(spread)
    return chosen


def _groups(records: list[ImageRecord], key: Any, rng: random.Random) -> list[list[ImageRecord]]:
    """``records`` grouped by ``key`` (groups in key order, then each group and the list shuffled)."""
    grouped: dict[Any, list[ImageRecord]] = defaultdict(list)
    for record in records:
        grouped[key(record)].append(record)
    queues = []
    for group in sorted(grouped):
        members = grouped[group]
        rng.shuffle(members)
        queues.append(members)
    rng.shuffle(queues)
    return queues


def _round_robin(queues: list[list[ImageRecord]]) -> list[ImageRecord]:
    longest = max((len(queue) for queue in queues), default=0)
    return [queue[index] for index in range(longest) for queue in queues if index < len(queue)]


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration batch (N×3×H×W float32, normalised as the bundle's input) and what the manifest records."""

    images: np.ndarray
    paths: list[str]
    policy: CalibrationPolicy
    data_sha256: str
    cache_hit: bool
    cache_file: Path

    def record(self) -> dict[str, Any]:
        """The manifest's ``calibration`` entry (without the method, which belongs to each quantized model)."""
        return {
            "policy": self.policy.name,
            "policy_sha256": self.policy.digest(),
            "policy_settings": self.policy.model_dump(),
            "split": self.policy.split,
            "images": len(self.paths),
            "seed": self.policy.seed,
            "data_sha256": self.data_sha256,
            "sha256_of_paths": hashlib.sha256("\n".join(self.paths).encode()).hexdigest(),
            "cache_hit": self.cache_hit,
        }


def calibration_cache_key(records: Sequence[ImageRecord], policy: CalibrationPolicy, size: tuple[int, int]) -> str:
    """What a cached calibration batch is valid for: the policy (its seed included), the chosen files in order
    (path, identity, camera, size, mtime: so the image count too) and the input size."""
    digest = hashlib.sha256(json.dumps([policy.digest(), list(size), len(records)]).encode())
    for record in records:
        try:
            stat = record.path.stat()
            digest.update(f"{record.path}|{record.pid}|{record.camid}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{record.path}|missing\n".encode())
    return digest.hexdigest()


def load_calibration_set(
    records: Sequence[ImageRecord],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    policy: CalibrationPolicy,
    cache_dir: Path | None = None,
    strict: bool = False,
) -> CalibrationSet:
    """The chosen calibration ``records`` (see :meth:`CalibrationPolicy.select`) decoded at ``size`` through the
    cache in ``cache_dir`` (default ``~/.cache/edgereid/calibration``) and normalised.

    Fewer than :data:`MIN_CALIBRATION_IMAGES` records or decodable images is a DataError.
    """
    if len(records) < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"the calibration set has {len(records)} images (policy {policy.name!r}); at least "
            f"{MIN_CALIBRATION_IMAGES} are needed to estimate activation ranges"
        )
    key = calibration_cache_key(records, policy, size)
    cache_file = (DEFAULT_CACHE_DIR if cache_dir is None else Path(cache_dir)) / f"{key[:32]}.npy"
    before = _identity(cache_file)
    decoded = decode_records(records, size, strict=strict, cache_path=cache_file)
    hit = before is not None and _identity(cache_file) == before
    if len(decoded.images) < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"only {len(decoded.images)} of {len(records)} calibration images could be decoded (first: "
            f"'{records[0].path}'); at least {MIN_CALIBRATION_IMAGES} are needed"
        )
    return CalibrationSet(
        images=normalize_images(decoded.images, mean, std),
        paths=[str(record.path) for record in decoded.records],
        policy=policy,
        data_sha256=hashlib.sha256(np.ascontiguousarray(decoded.images).tobytes()).hexdigest(),
        cache_hit=hit,
        cache_file=cache_file,
    )


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime): the cache file changes both when it is rewritten, so equal before and after = reused."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns
