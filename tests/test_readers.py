from __future__ import annotations

from pathlib import Path

import pytest

from edgereid.data import DatasetWarning, detect_format, load_dataset
from edgereid.errors import ConfigError, DataError
from tests.conftest import write_image, write_images


# --- real data -------------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_market1501_reads_the_mini_set(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "mini-market1501")
    assert dataset.name == "market1501"
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (32, 32, 32)
    first = dataset.query[0]
    assert first.path.name == "0004_c2s3_059152_00.jpg"
    assert (first.pid, first.camid) == (4, 1)
    assert {r.camid for r in dataset.train} <= set(range(6))
    # Every query has a gallery image of its identity: the mini set is a real protocol.
    gallery_ids = {r.pid for r in dataset.gallery}
    assert all(r.pid in gallery_ids for r in dataset.query)


@pytest.mark.realdata
def test_market1501_holdout_protocol_counts(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "market1501-train", "market1501-holdout")
    train_ids = {r.pid for r in dataset.train}
    test_ids = {r.pid for r in dataset.query} | {r.pid for r in dataset.gallery}
    assert (len(train_ids), len(test_ids)) == (500, 251)
    assert (len(dataset.query), len(dataset.gallery)) == (1122, 2641)
    assert len(dataset.train) + len(dataset.query) + len(dataset.gallery) == 12936
    assert max(train_ids) < min(test_ids), "the published protocol holds out the highest-numbered identities"
    pairs = [(r.pid, r.camid) for r in dataset.query]
    assert len(pairs) == len(set(pairs)), "one query per (identity, camera)"


@pytest.mark.realdata
def test_cuhk03_reader_protocol(shared_data: Path) -> None:
    root = shared_data / "cuhk03-labeled-val"
    assert detect_format(root) == "cuhk03"
    dataset = load_dataset(root)
    records = dataset.query + dataset.gallery
    assert len(records) == 938 and not dataset.train
    assert len({r.pid for r in records}) == 100
    assert {r.camid for r in records} == {0, 1}
    assert len(dataset.query) == len({(r.pid, r.camid) for r in records})
    by_name = {r.path.name: r for r in records}
    assert by_name["0000_04.jpg"].camid == 0 and by_name["0000_05.jpg"].camid == 1


@pytest.mark.realdata
def test_vehicle_reader(shared_data: Path) -> None:
    root = shared_data / "vehicle-reid"
    assert detect_format(root) == "vehicle-reid"
    dataset = load_dataset(root)
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (1014, 60, 60)
    assert dataset.num_ids("train") == 507 and dataset.num_ids("query") == 60
    # Each query's match is on the other camera, so the Market rule keeps it.
    gallery = {(r.pid, r.camid) for r in dataset.gallery}
    assert all((r.pid, 1 - r.camid) in gallery for r in dataset.query)
    assert not ({r.pid for r in dataset.train} & {r.pid for r in dataset.query})


# --- formats without real data here ------------------------------------------------------------------------------
def test_duke_names_in_market_layout(tmp_path: Path) -> None:
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        write_images(tmp_path / split, ["0001_c2_f0046182.jpg", "0001_c3_f0046199.jpg", "0012_c8_f0000001.jpg"])
    dataset = load_dataset(tmp_path)
    assert [(r.pid, r.camid) for r in dataset.query] == [(1, 1), (1, 2), (12, 7)]


def test_market_junk_identity_is_dropped_and_distractors_kept(tmp_path: Path) -> None:
    write_images(tmp_path / "query", ["0002_c1s1_000451_03.jpg"])
    write_images(tmp_path / "bounding_box_test", ["-1_c1s1_000401_03.jpg", "0000_c2s1_000401_03.jpg", "0002_c2s1_000551_01.jpg"])
    dataset = load_dataset(tmp_path, "market1501")
    assert [r.pid for r in dataset.gallery] == [0, 2]


def test_veri776_reader(tmp_path: Path) -> None:
    write_images(tmp_path / "image_train", ["0001_c001_00016450_0.jpg", "0001_c002_00016460_0.jpg"])
    write_images(tmp_path / "image_query", ["0002_c003_00000001_0.jpg"])
    write_images(tmp_path / "image_test", ["0002_c004_00000002_0.jpg", "0003_c020_00000003_1.jpg"])
    assert detect_format(tmp_path) == "veri776"
    dataset = load_dataset(tmp_path)
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(2, 3), (3, 19)]


def test_msmt17_reader_with_list_files(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "0000", ["0000_000_01_0303morning_0015_0.jpg", "0000_001_05_0303noon_0020_1.jpg"])
    write_images(tmp_path / "test" / "0003", ["0003_000_02_0303morning_0001_0.jpg", "0003_001_15_0303noon_0002_0.jpg"])
    (tmp_path / "list_train.txt").write_text(
        "0000/0000_000_01_0303morning_0015_0.jpg 0\n0000/0000_001_05_0303noon_0020_1.jpg 0\n"
    )
    (tmp_path / "list_query.txt").write_text("0003/0003_000_02_0303morning_0001_0.jpg 3\n")
    (tmp_path / "list_gallery.txt").write_text("0003/0003_001_15_0303noon_0002_0.jpg 3\n")
    assert detect_format(tmp_path) == "msmt17"
    dataset = load_dataset(tmp_path)
    assert [(r.pid, r.camid) for r in dataset.train] == [(0, 0), (0, 4)]
    assert dataset.gallery[0].camid == 14 and dataset.gallery[0].path.is_file()


def test_msmt17_bad_list_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "list_train.txt").write_text("0000/0000_000_01_x_0015_0.jpg 0\nnot-a-line\n")
    (tmp_path / "list_query.txt").write_text("")
    with pytest.raises(DataError, match=r"list_train.txt:2: expected 'RELATIVE_PATH PID'"):
        load_dataset(tmp_path, "msmt17")


def test_folder_reader_with_camera_subfolders_and_string_ids(tmp_path: Path) -> None:
    write_images(tmp_path / "suitcase_blue" / "gate1", ["a.jpg", "b.jpg"])
    write_images(tmp_path / "suitcase_blue" / "gate2", ["c.jpg"])
    write_images(tmp_path / "suitcase_red" / "gate2", ["d.jpg", "e.jpg"])
    dataset = load_dataset(tmp_path, "folder")
    assert [(r.path.name, r.pid, r.camid) for r in dataset.train] == [
        ("a.jpg", 0, 0), ("b.jpg", 0, 0), ("c.jpg", 0, 1), ("d.jpg", 1, 1), ("e.jpg", 1, 1)
    ]


def test_folder_reader_camera_regex_splits_and_numeric_ids(tmp_path: Path) -> None:
    for split in ("train", "query", "gallery"):
        write_images(tmp_path / split / "17", ["x_c3_1.jpg", "x_c5_2.jpg"])
    dataset = load_dataset(tmp_path, "folder", camera_regex=r"_c(?P<cam>\d+)_")
    assert [(r.pid, r.camid) for r in dataset.query] == [(17, 3), (17, 5)]


def test_folder_reader_without_cameras_gives_each_image_its_own(tmp_path: Path) -> None:
    write_images(tmp_path / "bag1", ["a.jpg", "b.jpg", "c.jpg"])
    dataset = load_dataset(tmp_path, "folder")
    assert sorted(r.camid for r in dataset.train) == [0, 1, 2]


# --- bad input ---------------------------------------------------------------------------------------------------
def test_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'.*nowhere' does not exist"):
        load_dataset(tmp_path / "nowhere", "market1501")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_unknown_layout_lists_what_was_found_and_expected(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match=r"cannot tell the layout .* holds: photos.*bounding_box_train"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"not in the Market-1501 layout: expected the sub-folders bounding_box_train/"):
        load_dataset(tmp_path, "market1501")


def test_unknown_format_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown data set format 'market1510'; did you mean 'market1501'"):
        load_dataset(tmp_path, "market1510")


def test_unparsable_names_show_examples_of_what_was_expected(tmp_path: Path) -> None:
    write_images(tmp_path / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "holiday.jpg", "IMG_0001.jpg"])
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path, "market1501", naming="market")
    message = str(error.value)
    assert "2 of 3 images" in message and "'IMG_0001.jpg'" in message
    assert "PPPP_cCsS_FFFFFF_BB.jpg" in message and "'0002_c1s1_000451_03.jpg'" in message


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    write_images(tmp_path / "bounding_box_train", ["0002_c1s1_000451_03.jpg"])
    (tmp_path / "query").mkdir()
    (tmp_path / "bounding_box_test").mkdir()
    with pytest.raises(DataError, match=r"query' holds no images named like"):
        load_dataset(tmp_path, "market1501", naming="market")


def test_query_without_gallery_is_an_error(tmp_path: Path) -> None:
    write_images(tmp_path / "query", ["0002_c1s1_000451_03.jpg"])
    with pytest.raises(DataError, match="'bounding_box_test/' missing"):
        load_dataset(tmp_path, "market1501")


def test_single_image_identities_are_counted_in_a_warning(tmp_path: Path) -> None:
    write_images(tmp_path / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0002_c2s1_000451_03.jpg", "0007_c1s1_000001_01.jpg"])
    with pytest.warns(DatasetWarning, match=r"1 identities .* single image \(e.g. 7\)"):
        load_dataset(tmp_path)


def test_bad_reader_options_are_named(tmp_path: Path) -> None:
    write_image(tmp_path / "bag1" / "a.jpg")
    with pytest.raises(ConfigError, match="named group 'cam'"):
        load_dataset(tmp_path, "folder", camera_regex=r"_c(\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        load_dataset(tmp_path, "folder", camera_regex=r"(")
    write_image(tmp_path / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    with pytest.raises(ConfigError, match="unknown naming 'veri'"):
        load_dataset(tmp_path, "market1501-holdout", naming="veri")
