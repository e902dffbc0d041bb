from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgereid.data import DatasetWarning, ImageRecord, load_dataset
from edgereid.data import images as images_module
from edgereid.data.images import decode_image, decode_records
from edgereid.errors import ConfigError, DataError
from tests.conftest import write_image


def noisy_jpeg(path: Path, size: tuple[int, int] = (64, 128)) -> Path:
    """A JPEG of random pixels, large enough that cutting it leaves a truncated image rather than no header."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def colour_records(directory: Path, count: int) -> list[ImageRecord]:
    """PNG images (lossless, so their colour survives exactly) of colour (10 * i, 0, 255 - i)."""
    return [
        ImageRecord(write_image(directory / f"{i:03d}.png", color=(10 * i, 0, 255 - i)), pid=i // 2, camid=0)
        for i in range(count)
    ]


# --- decode_image ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("P", 0, (0, 0, 0)),
    ],
)
def test_decode_image_converts_every_mode_to_rgb(
    tmp_path: Path, mode: str, value: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    Image.new(mode, (6, 4), value).save(path)
    decoded = decode_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (4, 6, 3)
    assert np.abs(decoded.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_decode_image_reads_16_bit_grayscale_at_its_level(tmp_path: Path, suffix: str) -> None:
    # Pillow's own convert("RGB") clips 16-bit levels at 255: this gradient came out almost white (mean 254).
    levels = np.linspace(0, 65535, 4 * 6).reshape(4, 6).astype(np.uint16)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I;16")
    decoded = decode_image(path)
    assert decoded.shape == (4, 6, 3)
    assert (decoded == (levels >> 8).astype(np.uint8)[..., None]).all()


@pytest.mark.parametrize(("pixels", "named"), [(np.float32, "floating-point"), (np.int32, "integer")])
def test_decode_image_refuses_32_bit_pixels_by_name(tmp_path: Path, pixels: type, named: str) -> None:
    path = tmp_path / "scientific.tif"
    Image.fromarray(np.full((4, 6), 3, dtype=pixels)).save(path)
    with pytest.raises(DataError, match=rf"scientific.tif.*32-bit {named} pixels .*expected an 8- or 16-bit image"):
        decode_image(path)


def test_decode_image_resizes_to_height_width(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", color=(200, 100, 50), size=(40, 90))
    decoded = decode_image(path, size=(32, 16))
    assert decoded.shape == (32, 16, 3)
    assert (decoded == (200, 100, 50)).all()


def test_decode_image_reports_truncated_file(tmp_path: Path) -> None:
    path = noisy_jpeg(tmp_path / "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        decode_image(path)


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_decode_image_reports_a_file_that_is_no_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"bad\.jpg.*cannot identify"):
        decode_image(path)


def test_decode_image_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.jpg.*No such file"):
        decode_image(tmp_path / "absent.jpg")


@pytest.mark.parametrize("size", [(0, 10), (10,), (10.0, 5)])
def test_decode_rejects_a_bad_size(tmp_path: Path, size: tuple[int, int]) -> None:
    with pytest.raises(ConfigError, match="height, width"):
        decode_records(colour_records(tmp_path, 1), size)


# --- decode_records ----------------------------------------------------------------------------------------------
def test_decode_records_decodes_every_image_into_one_array(tmp_path: Path) -> None:
    records = colour_records(tmp_path, 12)
    progress: list[tuple[int, int]] = []
    decoded = decode_records(records, (8, 4), num_workers=3, progress=lambda done, total: progress.append((done, total)))
    assert decoded.images.shape == (12, 8, 4, 3) and decoded.images.dtype == np.uint8
    assert decoded.images.flags.c_contiguous
    assert decoded.records == records and decoded.skipped == ()
    assert [tuple(image[0, 0]) for image in decoded.images] == [(10 * i, 0, 255 - i) for i in range(12)]
    assert progress[-1] == (12, 12) and len(progress) == 12


def test_decode_records_skips_corrupt_images_with_one_warning(tmp_path: Path) -> None:
    records = colour_records(tmp_path, 10)
    for broken in (2, 7):
        records[broken].path.write_bytes(b"garbage")
    with pytest.warns(DatasetWarning, match=r"skipped 2 of 10 images.*002\.png.*007\.png") as caught:
        decoded = decode_records(records, (8, 4))
    assert len(caught) == 1
    kept = [i for i in range(10) if i not in (2, 7)]
    assert decoded.records == [records[i] for i in kept]
    # Rows stay aligned with their records after the broken ones are dropped.
    assert [tuple(image[0, 0]) for image in decoded.images] == [(10 * i, 0, 255 - i) for i in kept]
    assert decoded.images.flags.c_contiguous
    assert [image.path for image in decoded.skipped] == [records[2].path, records[7].path]


def test_decode_records_warning_lists_a_few_paths_and_the_count(tmp_path: Path) -> None:
    records = colour_records(tmp_path, 9)
    for record in records[:8]:
        record.path.write_bytes(b"")
    with pytest.warns(DatasetWarning, match=r"skipped 8 of 9 .*and 3 more") as caught:
        decode_records(records, (8, 4))
    message = str(caught[0].message)
    assert "004.png" in message and "005.png" not in message


def test_decode_records_strict_fails_on_first_corrupt_image(tmp_path: Path) -> None:
    records = colour_records(tmp_path, 6)
    records[3].path.write_bytes(b"garbage")
    records[5].path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"003\.png.*cannot identify"):
        decode_records(records, (8, 4), strict=True)


def test_cache_is_reused_while_the_data_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = colour_records(tmp_path / "images", 5)
    cache = tmp_path / "cache" / "train-8x4.npy"
    first = decode_records(records, (8, 4), cache_path=cache)
    assert cache.is_file() and cache.with_suffix(".json").is_file()
    assert sorted(path.name for path in cache.parent.iterdir()) == ["train-8x4.json", "train-8x4.npy"]

    def no_decoding(path: Path, size: tuple[int, int] | None) -> np.ndarray:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(images_module, "_decode", no_decoding)
    second = decode_records(records, (8, 4), cache_path=cache)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.records == records


def test_cache_is_rebuilt_when_an_image_or_the_size_changes(tmp_path: Path) -> None:
    records = colour_records(tmp_path / "images", 4)
    cache = tmp_path / "train.npy"
    decode_records(records, (8, 4), cache_path=cache)
    write_image(records[1].path, color=(1, 2, 3))
    stat = records[1].path.stat()
    os.utime(records[1].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tuple(decode_records(records, (8, 4), cache_path=cache).images[1, 0, 0]) == (1, 2, 3)
    assert decode_records(records, (6, 2), cache_path=cache).images.shape == (4, 6, 2, 3)


def test_cache_keeps_the_skipped_images_and_warns_again(tmp_path: Path) -> None:
    records = colour_records(tmp_path / "images", 4)
    records[0].path.write_bytes(b"garbage")
    cache = tmp_path / "train.npy"
    with pytest.warns(DatasetWarning):
        decode_records(records, (8, 4), cache_path=cache)
    with pytest.warns(DatasetWarning, match=r"skipped 1 of 4.*000\.png"):
        cached = decode_records(records, (8, 4), cache_path=cache)
    assert cached.records == records[1:]
    with pytest.raises(DataError, match=r"000\.png"):
        decode_records(records, (8, 4), cache_path=cache, strict=True)


def test_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    records = colour_records(tmp_path / "images", 3)
    cache = tmp_path / "train.npy"
    decode_records(records, (8, 4), cache_path=cache)
    cache.write_bytes(cache.read_bytes()[:100])
    assert decode_records(records, (8, 4), cache_path=cache).images.shape == (3, 8, 4, 3)
    # And the rebuilt cache is whole again.
    assert np.load(cache).shape == (3, 8, 4, 3)


@pytest.mark.realdata
def test_decodes_the_mini_market_training_split(shared_data: Path) -> None:
    records = load_dataset(shared_data / "mini-market1501").train
    decoded = decode_records(records, (256, 128))
    assert decoded.images.shape == (len(records), 256, 128, 3) and decoded.skipped == ()
    assert 20 < decoded.images.mean() < 235


def damage_cache(cache: Path, damage: str) -> None:
    index = cache.with_suffix(".json")
    data = bytearray(cache.read_bytes())
    if damage == "bit flipped in the pixels":
        data[-7] ^= 0x10
        cache.write_bytes(bytes(data))
    elif damage == "bit flipped in the .npy header":
        # The shape's first digit: another row count.
        data[data.index(b"'shape': (") + 10] ^= 0x01
        cache.write_bytes(bytes(data))
    elif damage == "truncated .npy":
        cache.write_bytes(bytes(data[:-50]))
    elif damage == "bytes appended to the .npy":
        cache.write_bytes(bytes(data) + b"\0")
    elif damage == "index garbage":
        index.write_bytes(b"\x93\x00{garbage")
    elif damage == "index not an object":
        index.write_text("[1, 2]")
    elif damage == "index row number changed":
        content = json.loads(index.read_text())
        content["kept"][1] += 1
        index.write_text(json.dumps(content))
    elif damage == "index checksum missing":
        content = json.loads(index.read_text())
        del content["sha256"]
        index.write_text(json.dumps(content))
    else:
        raise AssertionError(damage)


@pytest.mark.parametrize(
    "damage",
    [
        "bit flipped in the pixels", "bit flipped in the .npy header", "truncated .npy", "bytes appended to the .npy",
        "index garbage", "index not an object", "index row number changed", "index checksum missing",
    ],
)
def test_damaged_cache_is_decoded_again_with_a_warning(
    damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = colour_records(tmp_path / "images", 5)
    records[3].path.write_bytes(b"garbage")
    cache = tmp_path / "cache" / "train.npy"
    with pytest.warns(DatasetWarning):
        fresh = decode_records(records, (8, 4), cache_path=cache)
    damage_cache(cache, damage)
    decoded_paths: list[Path] = []
    decode = images_module._decode

    def counting_decode(path: Path, size: tuple[int, int] | None) -> np.ndarray:
        decoded_paths.append(path)
        return decode(path, size)

    monkeypatch.setattr(images_module, "_decode", counting_decode)
    with caplog.at_level(logging.WARNING, logger=images_module.__name__), pytest.warns(DatasetWarning):
        again = decode_records(records, (8, 4), cache_path=cache)

    assert len(decoded_paths) == len(records)
    np.testing.assert_array_equal(again.images, fresh.images)
    assert again.records == fresh.records and again.skipped == fresh.skipped
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warned) == 1 and str(cache) in warned[0] and "decoding again" in warned[0]
    # The rewritten cache is whole again: used as it is, without a warning.
    decoded_paths.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=images_module.__name__), pytest.warns(DatasetWarning):
        reused = decode_records(records, (8, 4), cache_path=cache)
    assert decoded_paths == [] and not caplog.records
    np.testing.assert_array_equal(reused.images, fresh.images)


def test_cache_index_records_the_checksum_of_its_array(tmp_path: Path) -> None:
    records = colour_records(tmp_path / "images", 3)
    cache = tmp_path / "train.npy"
    decode_records(records, (8, 4), cache_path=cache)
    index = json.loads(cache.with_suffix(".json").read_text())
    assert index["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
