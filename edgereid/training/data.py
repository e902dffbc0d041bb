"""From a recipe's ``data`` section to tensors: the data set (generated first when synthetic, cut by a holdout
when asked), its splits decoded once into uint8 arrays, and the train split as identity classes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgereid.data import ImageRecord, ReIDDataset, load_dataset, make_holdout
from edgereid.data.images import DecodedImages, decode_records
from edgereid.data.synthetic import generate_synthetic
from edgereid.errors import ConfigError, DataError
from edgereid.recipes.schema import DataConfig

ProgressCallback = Callable[[int, int], None]


def prepare_dataset(config: DataConfig, require_train: bool = True) -> ReIDDataset:
    """The data set a recipe names; a synthetic one is generated at ``data.root`` on first use.

    ``require_train`` (training, calibration) refuses a data set without a train split; evaluation and verification
    pass False and take a query/gallery-only data set (an imported model judged on other data)."""
    root = Path(config.root)
    if config.synthetic is not None and not root.exists():
        synthetic = config.synthetic
        generate_synthetic(
            root,
            num_ids=synthetic.ids,
            num_cameras=synthetic.cameras,
            seed=synthetic.seed,
            size=synthetic.size,
            images_per_id_per_camera=synthetic.images_per_id_per_camera,
        )
    dataset = load_dataset(root, config.format, **config.options)
    if config.holdout is not None:
        dataset = make_holdout(
            dataset.train,
            num_test_ids=config.holdout.num_test_ids,
            seed=config.holdout.seed,
            name=f"{dataset.name}-holdout",
            root=dataset.root,
        )
    if require_train and not dataset.train:
        raise DataError(f"data set '{root}' has no training images; expected a train split to train on")
    return dataset


def decode_split(
    records: Sequence[ImageRecord],
    config: DataConfig,
    split: str,
    progress: ProgressCallback | None = None,
) -> DecodedImages:
    """A split decoded at the input size, through the on-disk cache when ``data.cache_dir`` is set."""
    cache_path = None
    if config.cache_dir is not None:
        # One cache file per data set, split and size; decode_records rebuilds it when the images change.
        tag = hashlib.sha256(str(Path(config.root).resolve()).encode()).hexdigest()[:12]
        height, width = config.size
        cache_path = Path(config.cache_dir) / f"{tag}-{split}-{height}x{width}.npy"
    return decode_records(records, config.size, strict=config.strict_images, cache_path=cache_path, progress=progress)


@dataclass(frozen=True)
class IdentityClasses:
    """Train identities as class indices 0..N-1, in sorted identity order."""

    pids: list[int]

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord]) -> IdentityClasses:
        return cls(sorted({record.pid for record in records}))

    def targets(self, records: Sequence[ImageRecord]) -> np.ndarray:
        index = {pid: position for position, pid in enumerate(self.pids)}
        return np.fromiter((index[record.pid] for record in records), dtype=np.int64, count=len(records))


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """N x H x W x 3 uint8 → N x 3 x H x W uint8 on ``device``, copied once."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()


def check_batch_fits(config: DataConfig, num_identities: int, world_size: int) -> None:
    needed = config.sampler.p * world_size
    if num_identities < needed:
        raise ConfigError(
            f"data.sampler.p={config.sampler.p} identities per batch"
            + (f" on each of {world_size} processes" if world_size > 1 else "")
            + f" needs at least {needed} training identities, but '{config.root}' has {num_identities}; "
            f"lower data.sampler.p to at most {num_identities // world_size}"
        )
