from __future__ import annotations

import json
import os
import stat
from collections import Counter, defaultdict
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgereid.data import load_dataset
from edgereid.data.synthetic import (
    METADATA_FILE,
    NUM_ATTRIBUTES,
    OCCLUDERS,
    SPLIT_DIRS,
    VIEWS,
    IdentityAttributes,
    SyntheticSummary,
    generate_synthetic,
    sample_camera_style,
    sample_identities,
)
from edgereid.errors import ConfigError, DataError

# Small enough to generate in well under a second, large enough for every split to hold several identities.
SMALL = {"num_ids": 8, "num_cameras": 3, "images_per_id_per_camera": 3, "size": (64, 32)}


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    """Staging or retired folders that generate_synthetic left beside ``name``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticSummary]:
    out = tmp_path_factory.mktemp("synthetic") / "set"
    return out, generate_synthetic(out, seed=3, **SMALL)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def metadata(small_set: tuple[Path, SyntheticSummary]) -> dict:  # type: ignore[type-arg]
    return json.loads((small_set[0] / METADATA_FILE).read_text())


# --- layout, names and counts -----------------------------------------------------------------------------------


def test_layout_is_market1501_and_names_parse(small_set: tuple[Path, SyntheticSummary]) -> None:
    out, summary = small_set
    assert sorted(p.name for p in out.iterdir()) == sorted([*SPLIT_DIRS.values(), METADATA_FILE])
    dataset = load_dataset(out, format="market1501")
    for split in SPLIT_DIRS:
        records = dataset.split(split)
        assert len(records) == summary.images[split] > 0
        assert dataset.num_ids(split) == summary.ids[split]
        assert all(r.path.suffix == ".jpg" and 0 <= r.camid < SMALL["num_cameras"] for r in records)
    # The market reader with naming auto-detection picks the Market-1501 pattern too.
    assert len(load_dataset(out).train) == summary.images["train"]


def test_counts_follow_ids_cameras_and_images_per_camera(small_set: tuple[Path, SyntheticSummary]) -> None:
    out, summary = small_set
    dataset = load_dataset(out, format="market1501")
    num_ids, num_cameras, per_camera = SMALL["num_ids"], SMALL["num_cameras"], SMALL["images_per_id_per_camera"]
    records = dataset.train + dataset.query + dataset.gallery
    per_pair = Counter((r.pid, r.camid) for r in records)
    # Every identity is seen by 2..num_cameras cameras, each exactly images_per_id_per_camera times.
    assert set(per_pair.values()) == {per_camera}
    cameras_of = defaultdict(set)
    for pid, camid in per_pair:
        cameras_of[pid].add(camid)
    assert sorted(cameras_of) == list(range(1, num_ids + 1))
    assert all(2 <= len(cams) <= num_cameras for cams in cameras_of.values())
    assert summary.total_images == len(records) == per_camera * sum(len(c) for c in cameras_of.values())
    assert summary.num_cameras == num_cameras and summary.size == SMALL["size"]


def test_identities_split_into_train_and_test_halves(small_set: tuple[Path, SyntheticSummary]) -> None:
    out, summary = small_set
    dataset = load_dataset(out, format="market1501")
    train_ids = {r.pid for r in dataset.train}
    query_ids, gallery_ids = {r.pid for r in dataset.query}, {r.pid for r in dataset.gallery}
    assert not train_ids & (query_ids | gallery_ids)
    assert query_ids == gallery_ids
    assert len(query_ids) == SMALL["num_ids"] // 2 and len(train_ids) == SMALL["num_ids"] - SMALL["num_ids"] // 2
    assert summary.ids == {"train": len(train_ids), "query": len(query_ids), "gallery": len(gallery_ids)}
    # One query per (test identity, camera), the rest of that camera's images in the gallery, so every query
    # has a match on another camera.
    query_pairs = Counter((r.pid, r.camid) for r in dataset.query)
    assert set(query_pairs.values()) == {1}
    gallery_pairs = Counter((r.pid, r.camid) for r in dataset.gallery)
    assert set(gallery_pairs) == set(query_pairs)
    assert set(gallery_pairs.values()) == {SMALL["images_per_id_per_camera"] - 1}
    for pid, camid in query_pairs:
        assert any(p == pid and c != camid for p, c in gallery_pairs)


def test_image_size_option_is_honoured(tmp_path: Path) -> None:
    summary = generate_synthetic(tmp_path / "s", num_ids=2, num_cameras=2, images_per_id_per_camera=2, size=(40, 24))
    sizes = {Image.open(p).size for p in (tmp_path / "s").rglob("*.jpg")}
    assert sizes == {(24, 40)}  # PIL gives (width, height)
    assert summary.size == (40, 24)


def test_published_folder_is_readable_like_any_new_folder(small_set: tuple[Path, SyntheticSummary]) -> None:
    out = small_set[0]
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o777 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == expected


# --- determinism ------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path: Path, small_set: tuple[Path, SyntheticSummary]) -> None:
    again = tmp_path / "again"
    generate_synthetic(again, seed=3, **SMALL)  # type: ignore[arg-type]
    assert file_bytes(again) == file_bytes(small_set[0])


def test_different_seed_gives_different_files(tmp_path: Path, small_set: tuple[Path, SyntheticSummary]) -> None:
    other = tmp_path / "other"
    generate_synthetic(other, seed=4, **SMALL)  # type: ignore[arg-type]
    first, second = file_bytes(small_set[0]), file_bytes(other)
    assert first[METADATA_FILE] != second[METADATA_FILE]
    shared_names = set(first) & set(second) - {METADATA_FILE}
    assert all(first[name] != second[name] for name in shared_names)
    assert sample_identities(20, 3) != sample_identities(20, 4)
    assert sample_camera_style(3, 0) != sample_camera_style(4, 0)


def test_public_samplers_match_what_was_generated(metadata: dict) -> None:  # type: ignore[type-arg]
    identities = sample_identities(SMALL["num_ids"], 3)
    assert metadata["identities"] == {f"{i:04d}": asdict(a) for i, a in enumerate(identities, start=1)}
    cameras = [asdict(sample_camera_style(3, c)) for c in range(SMALL["num_cameras"])]
    assert metadata["cameras"] == json.loads(json.dumps(cameras))
    # A longer list starts with the same identities: identity i does not depend on how many follow it.
    assert sample_identities(SMALL["num_ids"] + 10, 3)[: SMALL["num_ids"]] == identities


# --- a real ReID problem ----------------------------------------------------------------------------------------


def test_identities_share_attribute_vocabularies_and_some_are_confusable() -> None:
    identities = sample_identities(200, 0)
    assert all(a.shared_with(a) == NUM_ATTRIBUTES == len(fields(IdentityAttributes)) for a in identities)
    shared = [identities[i].shared_with(identities[j]) for i in range(200) for j in range(i + 1, 200)]
    # Near-twins (one or two attributes apart) exist, while identical twins are (almost) absent.
    assert sum(s >= NUM_ATTRIBUTES - 2 for s in shared) >= 10
    assert sum(s == NUM_ATTRIBUTES for s in shared) <= 2
    # Shared vocabularies: every value of the main garments is worn by many identities, so colour alone is
    # not an identity.
    for name in ("upper_colour", "lower_colour", "bag", "build"):
        counts = Counter(getattr(a, name) for a in identities)
        assert max(counts.values()) >= 10, (name, counts)
    assert len({(a.upper_colour, a.lower_colour) for a in identities}) < 200


def test_cameras_have_their_own_style() -> None:
    styles = [sample_camera_style(0, c) for c in range(6)]
    assert len(set(styles)) == 6
    for attribute in ("channel_gains", "brightness", "contrast", "gamma", "noise_sigma"):
        assert len({getattr(s, attribute) for s in styles}) == 6, attribute
    # A camera's style does not depend on how many cameras there are.
    assert sample_camera_style(0, 2) == styles[2]


def test_same_identity_looks_different_on_different_cameras(small_set: tuple[Path, SyntheticSummary]) -> None:
    dataset = load_dataset(small_set[0], format="market1501")
    by_pair: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
    for record in dataset.train + dataset.query + dataset.gallery:
        by_pair[(record.pid, record.camid)].append(np.asarray(Image.open(record.path), np.float32).mean(axis=(0, 1)))
    differences = []
    for (pid, camid), means in by_pair.items():
        for (other_pid, other_camid), other_means in by_pair.items():
            if pid == other_pid and camid < other_camid:
                differences.append(float(np.abs(np.mean(means, axis=0) - np.mean(other_means, axis=0)).max()))
    assert differences
    # Mean colour of one person moves by several grey levels between cameras (cast, exposure, background)...
    assert float(np.median(differences)) > 8.0
    # ... more than it moves between images of one camera.
    within = [float(np.abs(np.array(m) - np.mean(m, axis=0)).max()) for m in by_pair.values()]
    assert float(np.median(differences)) > float(np.median(within))


def test_metadata_describes_the_set(small_set: tuple[Path, SyntheticSummary], metadata: dict) -> None:  # type: ignore[type-arg]
    out, summary = small_set
    assert metadata["generator"] == "edgereid.data.synthetic"
    assert metadata["seed"] == 3 and metadata["size"] == list(SMALL["size"])  # type: ignore[call-overload]
    for key in ("num_ids", "num_cameras", "images_per_id_per_camera"):
        assert metadata[key] == SMALL[key]
    assert metadata["occlusion_rate"] == 0.25 and metadata["jpeg_quality"] == 90
    assert len(metadata["identities"]) == SMALL["num_ids"]
    assert len(metadata["cameras"]) == SMALL["num_cameras"]
    images = metadata["images"]
    assert len(images) == summary.total_images
    assert sorted(i["file"] for i in images) == sorted(
        str(p.relative_to(out)) for p in out.rglob("*.jpg")
    )
    for image in images:
        name = Path(image["file"]).name
        assert name.startswith(f"{image['pid']:04d}_c{image['camid'] + 1}s1_")
        assert image["view"] in VIEWS
        assert image["occluder"] is None or image["occluder"] in OCCLUDERS


@pytest.mark.parametrize(("rate", "expected"), [(0.0, set()), (1.0, set(OCCLUDERS))])
def test_occlusion_rate_controls_occluders(tmp_path: Path, rate: float, expected: set[str]) -> None:
    generate_synthetic(tmp_path / "s", num_ids=6, num_cameras=2, images_per_id_per_camera=4, size=(48, 24),
                       occlusion_rate=rate)  # fmt: skip
    images = json.loads((tmp_path / "s" / METADATA_FILE).read_text())["images"]
    occluders = [i["occluder"] for i in images]
    if rate == 0.0:
        assert occluders == [None] * len(images)
    else:
        assert None not in occluders and set(occluders) == expected


# --- bad input and atomic output --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_ids": 1}, "num_ids=1"),
        ({"num_ids": 10_000}, "num_ids=10000"),
        ({"num_cameras": 1}, "num_cameras=1"),
        ({"num_cameras": 10}, "num_cameras=10"),
        ({"size": (8, 8)}, "size=(8, 8)"),
        ({"size": (128,)}, "size=(128,)"),
        ({"size": (128.0, 64)}, "size=(128.0, 64)"),
        ({"images_per_id_per_camera": 1}, "images_per_id_per_camera=1"),
        ({"seed": -1}, "seed=-1"),
        ({"occlusion_rate": 1.5}, "occlusion_rate=1.5"),
        ({"jpeg_quality": 0}, "jpeg_quality=0"),
        ({"num_ids": True}, "num_ids=True"),
    ],
)
def test_bad_parameters_are_named(tmp_path: Path, options: dict, named: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="invalid; expected") as raised:
        generate_synthetic(tmp_path / "s", **options)
    assert named in str(raised.value)
    assert not (tmp_path / "s").exists() and leftovers(tmp_path, "s") == []


def test_non_empty_folder_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as raised:
        generate_synthetic(out, num_ids=2, num_cameras=2, images_per_id_per_camera=2)
    assert str(out) in str(raised.value) and "overwrite" in str(raised.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    generate_synthetic(out, num_ids=2, num_cameras=2, images_per_id_per_camera=2, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / METADATA_FILE).is_file()
    assert leftovers(tmp_path, "s") == []


def test_empty_folder_and_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    generate_synthetic(tmp_path / "empty", num_ids=2, num_cameras=2, images_per_id_per_camera=2)
    assert (tmp_path / "empty" / METADATA_FILE).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder") as raised:
        generate_synthetic(tmp_path / "file", num_ids=2, num_cameras=2, images_per_id_per_camera=2, overwrite=True)
    assert str(tmp_path / "file") in str(raised.value)


class Interrupted(Exception):
    pass


def fail_after(count: int):  # type: ignore[no-untyped-def]
    def progress(done: int, total: int) -> None:
        assert 0 < done <= total
        if done == count:
            raise Interrupted(f"stopped at {done} of {total}")

    return progress


def test_failure_leaves_no_half_written_output(tmp_path: Path) -> None:
    out = tmp_path / "new" / "s"
    with pytest.raises(Interrupted):
        generate_synthetic(out, num_ids=4, num_cameras=2, images_per_id_per_camera=2, progress=fail_after(5))
    assert not out.exists()
    assert leftovers(out.parent, "s") == []


def test_failure_while_overwriting_keeps_the_old_set(tmp_path: Path) -> None:
    out = tmp_path / "s"
    generate_synthetic(out, num_ids=2, num_cameras=2, images_per_id_per_camera=2, seed=1)
    before = file_bytes(out)
    with pytest.raises(Interrupted):
        generate_synthetic(out, num_ids=4, num_cameras=2, images_per_id_per_camera=2, seed=2, overwrite=True,
                           progress=fail_after(3))  # fmt: skip
    assert file_bytes(out) == before
    assert leftovers(tmp_path, "s") == []


def test_progress_reports_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    summary = generate_synthetic(tmp_path / "s", num_ids=3, num_cameras=2, images_per_id_per_camera=2,
                                 progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    total = summary.total_images
    assert calls == [(done, total) for done in range(1, total + 1)]
    assert summary.images_per_second > 0
