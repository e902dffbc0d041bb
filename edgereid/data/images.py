"""Decoding images, and decoding a whole split once into one array so that training never re-reads a JPEG.

numpy and Pillow only: this module is part of the base install, which must work without torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from edgereid.atomic import atomic_file
from edgereid.data.readers import DatasetWarning
from edgereid.data.records import ImageRecord
from edgereid.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# What Pillow raises for a file it cannot read: missing, not an image, truncated, malformed or absurdly large.
_DECODER_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
_SHOWN_SKIPPED = 5
_SIXTEEN_BIT_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit floating-point"}
# Bump when the cached array's meaning or the index's layout changes (resampling, colour conversion, checksum), so
# old caches are rebuilt.
_CACHE_FORMAT = 2
# Cached arrays are read and hashed in pieces of this many bytes.
_CHECKSUM_CHUNK = 16 * 2**20
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SkippedImage:
    """An image that could not be decoded, with the decoder's reason."""

    path: Path
    reason: str


@dataclass(frozen=True)
class DecodedImages:
    """A split decoded at the training size.

    ``images[i]`` is the uint8 HxWx3 RGB image of ``records[i]``; records whose image could not be decoded are
    left out of both and listed in ``skipped``.
    """

    images: np.ndarray
    records: list[ImageRecord]
    skipped: tuple[SkippedImage, ...]


def decode_image(path: Path | str, size: tuple[int, int] | None = None) -> np.ndarray:
    """The image at ``path`` as a uint8 HxWx3 RGB array, resized to ``size`` = (height, width) when given.

    Grayscale, palette, RGBA and CMYK images are converted to RGB. A missing, corrupt or truncated file raises
    :class:`DataError` naming the path and the decoder's reason.
    """
    if size is not None:
        _check_size(size)
    try:
        return _decode(Path(path), size)
    except _DECODER_ERRORS as error:
        raise _decode_error(Path(path), _reason(error)) from error


def normalize_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """N×H×W×3 uint8 RGB → N×3×H×W float32 scaled to [0, 1] and normalised with ``mean``/``std``, bit for bit as
    training's ``EvalTransform`` computes it (float32 ``v * (1/255)``, then ``(x - mean) / std``).

    Each channel is one lookup in a 256-entry table computed with those very float32 operations: as exact as the
    arithmetic on every pixel and about twice as fast.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ConfigError(f"expected uint8 images shaped N×H×W×3 (RGB), got {images.dtype} {images.shape}")
    count, height, width, _ = images.shape
    out = np.empty((count, 3, height, width), dtype=np.float32)
    table = _normalization_table(mean, std)
    for channel in range(3):
        np.take(table[channel], images[..., channel], out=out[:, channel])
    return out


def _normalization_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3×256 float32: the normalised value of every uint8 level per channel."""
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean and std must have three per-channel values, got {tuple(mean)} and {tuple(std)}")
    levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray((levels[None, :] - mean32) / std32, dtype=np.float32)


def decode_records(
    records: Sequence[ImageRecord],
    size: tuple[int, int],
    *,
    strict: bool = False,
    cache_path: Path | None = None,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> DecodedImages:
    """Decode every record's image once into one contiguous uint8 array N x H x W x 3 at ``size`` = (height, width).

    An image that cannot be decoded is skipped, and the skipped images are reported in one
    :class:`DatasetWarning`; with ``strict`` the first of them raises :class:`DataError` instead.

    With ``cache_path`` (a ``.npy`` file; its index is written beside it as ``.json``) the array is saved after
    decoding and loaded instead of decoding while the image paths, their sizes and modification times, and
    ``size`` stay the same. Name one cache file per split and size: a different key rebuilds and overwrites it.

    ``progress(done, total)`` is called after each decoded image. Decoding runs on ``num_workers`` threads
    (default: up to 8, one per CPU), as Pillow releases the GIL while it decodes.
    """
    _check_size(size)
    if num_workers is not None and num_workers < 1:
        raise ConfigError(f"num_workers must be at least 1, got {num_workers}")
    key = _cache_key(records, size) if cache_path is not None else ""
    cached = _load_cache(cache_path, key, records, size) if cache_path is not None else None
    if cached is not None:
        if strict and cached.skipped:
            first = cached.skipped[0]
            raise _decode_error(first.path, first.reason)
        decoded = cached
        if progress is not None:
            progress(len(records), len(records))
    else:
        decoded, kept_rows = _decode_all(
            records, size, strict, num_workers or min(8, os.cpu_count() or 1), progress
        )
        if cache_path is not None:
            _save_cache(cache_path, key, decoded, kept_rows)
    if decoded.skipped:
        _warn_skipped(decoded.skipped, len(records))
    return decoded


def _check_size(size: tuple[int, int]) -> None:
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ConfigError(f"image size must be (height, width) with two positive integers, got {size!r}")


def _decode(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    with Image.open(path) as image:
        # load() decodes the whole file, so a truncated image fails here rather than yielding grey rows.
        image.load()
        rgb = _to_rgb(image)
    return np.asarray(_resize(rgb, size) if size is not None else rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:
        # Pillow's convert() clips 16-bit levels at 255, which turns a 16-bit grayscale image almost white; keep
        # the high byte instead, as Pillow itself does when it reads a 16-bit RGB PNG.
        levels = np.asarray(image).astype(np.uint16)
        return Image.fromarray((levels >> 8).astype(np.uint8)).convert("RGB")
    if image.mode in _UNSCALED_MODES:
        raise ValueError(
            f"it holds {_UNSCALED_MODES[image.mode]} pixels (Pillow mode {image.mode}), whose white level is unknown; "
            "expected an 8- or 16-bit image"
        )
    return image.convert("RGB")


def _resize(rgb: Image.Image, size: tuple[int, int]) -> Image.Image:
    if rgb.size == (size[1], size[0]):
        return rgb
    # Pillow's bilinear filter widens its support when shrinking, so downscaling is antialiased.
    return rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 H×W×3 RGB array at ``size`` = (height, width), resampled exactly as :func:`decode_image` resizes a
    file, so an image handed over as pixels embeds as the same image read from disk."""
    _check_size(size)
    if image.shape[:2] == size:
        return image
    return np.asarray(_resize(Image.fromarray(np.ascontiguousarray(image)), size), dtype=np.uint8)


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


def _decode_error(path: Path, reason: str) -> DataError:
    return DataError(f"cannot decode the image '{path}': {reason}")


def _decode_all(
    records: Sequence[ImageRecord],
    size: tuple[int, int],
    strict: bool,
    num_workers: int,
    progress: ProgressCallback | None,
) -> tuple[DecodedImages, list[int]]:
    """The decoded split, and the rows of ``records`` that it kept."""
    images = np.empty((len(records), size[0], size[1], 3), dtype=np.uint8)

    def decode_into_row(row: int) -> str | None:
        try:
            images[row] = _decode(records[row].path, size)
        except _DECODER_ERRORS as error:
            return _reason(error)
        return None

    failures: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        try:
            for row, failure in enumerate(pool.map(decode_into_row, range(len(records)))):
                if failure is not None:
                    if strict:
                        raise _decode_error(records[row].path, failure)
                    failures[row] = failure
                if progress is not None:
                    progress(row + 1, len(records))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    kept = [row for row in range(len(records)) if row not in failures]
    skipped = tuple(SkippedImage(records[row].path, reason) for row, reason in failures.items())
    return DecodedImages(_compact(images, kept), [records[row] for row in kept], skipped), kept


def _compact(images: np.ndarray, kept: list[int]) -> np.ndarray:
    """Move the kept rows to the front in place: fancy indexing would need a second array of the whole split."""
    for destination, source in enumerate(kept):
        if destination != source:
            images[destination] = images[source]
    return images[: len(kept)]


def _warn_skipped(skipped: tuple[SkippedImage, ...], total: int) -> None:
    shown = "; ".join(f"'{image.path}' ({image.reason})" for image in skipped[:_SHOWN_SKIPPED])
    more = f"; and {len(skipped) - _SHOWN_SKIPPED} more" if len(skipped) > _SHOWN_SKIPPED else ""
    warnings.warn(
        f"skipped {len(skipped)} of {total} images that could not be decoded: {shown}{more}",
        DatasetWarning,
        stacklevel=3,
    )


def _cache_key(records: Sequence[ImageRecord], size: tuple[int, int]) -> str:
    digest = hashlib.sha256(json.dumps([_CACHE_FORMAT, list(size)]).encode())
    for record in records:
        try:
            stat = os.stat(record.path)
            fingerprint = f"{record.path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            # A missing file is part of the key too, so the cache is rebuilt once it appears.
            fingerprint = f"{record.path}\0missing\n"
        digest.update(fingerprint.encode())
    return digest.hexdigest()


def _index_path(cache_path: Path) -> Path:
    return cache_path.with_suffix(".json")


def _load_cache(
    cache_path: Path, key: str, records: Sequence[ImageRecord], size: tuple[int, int]
) -> DecodedImages | None:
    """The cached split when its index matches ``key`` and its array the index's checksum; None (and a rebuild) when
    it is absent, stale, damaged or unreadable: a cache is disposable, so decoding again beats failing."""
    try:
        index = json.loads(_index_path(cache_path).read_text())
        if not isinstance(index, dict):
            raise DataError(f"its index '{_index_path(cache_path)}' holds {type(index).__name__}, not a JSON object")
        if index.get("key") != key:
            logger.info("decoded-image cache %s is stale; decoding again", cache_path)
            return None
        kept = _kept_rows(index, records, cache_path)
        skipped = tuple(SkippedImage(Path(entry["path"]), entry["reason"]) for entry in index["skipped"])
        images = _read_checked_array(cache_path, index["sha256"], (len(kept), size[0], size[1], 3))
    except FileNotFoundError:
        return None
    except (DataError, OSError, EOFError, ValueError, LookupError, TypeError) as error:
        logger.warning("decoded-image cache %s cannot be used (%s); decoding again", cache_path, error)
        return None
    logger.info("loaded %d decoded images from %s", len(kept), cache_path)
    return DecodedImages(images, [records[row] for row in kept], skipped)


def _kept_rows(index: dict[str, Any], records: Sequence[ImageRecord], cache_path: Path) -> list[int]:
    """The index's kept rows, checked against its skipped images: a damaged row number would pair every image
    after it with another record's identity."""
    kept = index["kept"]
    skipped_paths = [entry["path"] for entry in index["skipped"]]
    rows_ascending = (
        all(type(row) is int and 0 <= row < len(records) for row in kept)
        and all(first < second for first, second in itertools.pairwise(kept))
    )
    left_out = sorted(set(range(len(records))) - set(kept)) if rows_ascending else []
    if not rows_ascending or [str(records[row].path) for row in left_out] != skipped_paths:
        raise DataError(
            f"its index '{_index_path(cache_path)}' lists rows that do not match its {len(records)} images and "
            f"{len(skipped_paths)} skipped images; expected ascending row numbers of the decoded images"
        )
    return list(kept)


def _read_checked_array(cache_path: Path, sha256: str, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of ``shape`` in the .npy file ``cache_path``, read and hashed in one pass."""
    digest = hashlib.sha256()
    with cache_path.open("rb") as file:
        version = np.lib.format.read_magic(file)
        if version not in _NPY_HEADER_READERS:
            raise DataError(f"'{cache_path}' is .npy format {version}; expected 1.0 or 2.0 as numpy writes it")
        stored_shape, fortran_order, dtype = _NPY_HEADER_READERS[version](file)
        if dtype != np.uint8 or fortran_order or stored_shape != shape:
            raise DataError(
                f"'{cache_path}' holds {dtype} {stored_shape}{' in Fortran order' if fortran_order else ''}; "
                f"expected uint8 {shape} as its index says"
            )
        header_length = file.tell()
        file.seek(0)
        digest.update(file.read(header_length))
        images = np.empty(shape, dtype=np.uint8)
        data = images.reshape(-1).data
        filled = 0
        while filled < len(data):
            count = file.readinto(data[filled : filled + _CHECKSUM_CHUNK])
            if not count:
                raise DataError(f"'{cache_path}' is truncated: {filled} of {len(data)} bytes of images")
            digest.update(data[filled : filled + count])
            filled += count
        if file.read(1):
            raise DataError(f"'{cache_path}' has bytes after its {len(data)} bytes of images")
    if digest.hexdigest() != sha256:
        raise DataError(f"'{cache_path}' does not match the sha256 recorded in its index: its bytes were changed")
    return images


class _HashingWriter:
    """Passes writes on to ``file`` and hashes them, so a cache's checksum costs no second pass over it."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)


def _save_cache(cache_path: Path, key: str, decoded: DecodedImages, kept_rows: list[int]) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    # Without its index an array is never trusted, so dropping the old index first means a crash between the two
    # replacements leaves a cache that is rebuilt rather than one whose index describes another array.
    _index_path(cache_path).unlink(missing_ok=True)
    with atomic_file(cache_path) as file:
        writer = _HashingWriter(file)
        np.save(writer, decoded.images, allow_pickle=False)
    index = {
        "key": key,
        "kept": kept_rows,
        "skipped": [{"path": str(image.path), "reason": image.reason} for image in decoded.skipped],
        "sha256": writer.digest.hexdigest(),
    }
    with atomic_file(_index_path(cache_path)) as file:
        file.write(json.dumps(index).encode())
