"""Data sets: readers with a registry, the holdout protocol, synthetic data, decoding, sampling, augmentation.

Everything importable from here works without torch; `edgereid.data.transforms` needs the `[train]` extra.
"""

from edgereid.data.holdout import make_holdout
from edgereid.data.readers import DatasetWarning
from edgereid.data.records import SPLITS, ImageRecord, ReIDDataset
from edgereid.data.registry import available_formats, detect_format, load_dataset, register_reader

__all__ = [
    "SPLITS",
    "DatasetWarning",
    "ImageRecord",
    "ReIDDataset",
    "available_formats",
    "detect_format",
    "load_dataset",
    "make_holdout",
    "register_reader",
]
