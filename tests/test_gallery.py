"""The faiss gallery against numpy references, its files on disk, and the gallery/search commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.cli.gallery import gallery, search_command
from edgereid.errors import ConfigError, DataError
from edgereid.evaluation import compute_distance, re_ranking
from edgereid.locking import LockTimeoutError
from edgereid.runtime import gallery as gallery_module
from edgereid.runtime.gallery import (
    Gallery,
    GalleryItem,
    Match,
    StaleGalleryError,
    check_embedder,
    item_for_image,
    remove_items,
    update_gallery,
)
from tests.conftest import lock_held_elsewhere

REPO = Path(__file__).resolve().parents[1]

DIM = 16


def unit(rows: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def items(count: int, cameras: int = 3) -> list[GalleryItem]:
    return [
        GalleryItem(identity=str(i % 7), camera=str(i % cameras), path=f"img/{i}.jpg", time=float(i), extra={"n": i})
        for i in range(count)
    ]


def brute_force(queries: np.ndarray, gallery_vectors: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ gallery_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return order, np.take_along_axis(scores, order, axis=1)


def ids(matches: Sequence[Sequence[Match]]) -> list[list[int]]:
    return [[m.id for m in row] for row in matches]


def test_exact_search_matches_numpy_brute_force() -> None:
    vectors, queries = unit(300), unit(20, seed=1)
    flat = Gallery.create(DIM, "model", "Flat")
    added = flat.add(vectors, items(300))
    assert added.tolist() == list(range(300))
    result = flat.search(queries, 10)
    expected_ids, expected_scores = brute_force(queries, vectors, 10)
    assert ids(result) == expected_ids.tolist()
    np.testing.assert_allclose([[m.score for m in row] for row in result], expected_scores, atol=1e-5)
    assert result[3][0].item == items(300)[expected_ids[3, 0]]
    # top_k beyond the gallery: everything, in order.
    assert len(flat.search(queries[:1], 1000)[0]) == 300


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat"])
def test_removed_ids_never_come_back_and_ids_stay_stable(factory: str) -> None:
    vectors, queries = unit(200), unit(10, seed=1)
    hnsw_options: dict[str, Any] = {"ef_search": 200} if "HNSW" in factory else {}
    searched = Gallery.create(DIM, "model", factory, **hnsw_options)
    searched.add(vectors[:150], items(150))
    later = searched.add(vectors[150:], items(50))
    assert later.tolist() == list(range(150, 200))
    removed = [int(i) for i in brute_force(queries, vectors, 3)[0].ravel()] + [199]
    assert searched.remove(removed) == len(set(removed))
    assert len(searched) == 200 - len(set(removed))
    keep = np.setdiff1d(np.arange(200), removed)
    expected = keep[brute_force(queries, vectors[keep], 5)[0]]
    options: dict[str, Any] = {"nprobe": 4} if "IVF" in factory else {}
    assert ids(searched.search(queries, 5, **options)) == expected.tolist()
    with pytest.raises(DataError, match="no item with id 199"):
        searched.remove([199])
    # Compaction drops tombstones without changing any answer.
    searched.compact()
    assert searched.info()["tombstones"] == 0 and searched.info()["stored_vectors"] == len(keep)
    assert ids(searched.search(queries, 5, **options)) == expected.tolist()


def test_save_load_round_trip_keeps_items_and_results(tmp_path: Path) -> None:
    vectors, queries = unit(120), unit(8, seed=1)
    original = Gallery.create(DIM, "model", "HNSW8", ef_search=100)
    original.add(vectors, items(120))
    original.remove([5, 6])
    before = original.search(queries, 7)
    original.save(tmp_path / "g", compact=False)
    loaded = Gallery.load(tmp_path / "g", "model", dim=DIM)
    assert loaded.items() == original.items()
    assert loaded.info()["tombstones"] == 2 and loaded.info()["ef_search"] == 100
    assert loaded.search(queries, 7) == before
    header = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert header["count"] == 118 and header["next_id"] == 120 and header["factory"] == "HNSW8"
    assert loaded.add(vectors[:1]).tolist() == [120]


def test_tampered_file_other_model_and_other_dim_are_refused(tmp_path: Path) -> None:
    saved = Gallery.create(DIM, "model-a", "Flat")
    saved.add(unit(10), items(10))
    saved.save(tmp_path / "g")
    with pytest.raises(ConfigError, match="model-a, not of model model-b"):
        Gallery.load(tmp_path / "g", "model-b")
    with pytest.raises(ConfigError, match="16-d embeddings; expected 512-d"):
        Gallery.load(tmp_path / "g", dim=512)
    with pytest.raises(ConfigError, match="32 dimensions but the gallery holds 16-d"):
        saved.add(unit(2, dim=32))
    items_file = tmp_path / "g" / "items.jsonl"
    items_file.write_text(items_file.read_text().replace('"identity": "3"', '"identity": "4"'))
    with pytest.raises(DataError, match="items.jsonl' does not match the sha256"):
        Gallery.load(tmp_path / "g")


def test_failed_save_keeps_the_previous_gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Gallery.create(DIM, "model", "Flat")
    first.add(unit(10), items(10))
    first.save(tmp_path / "g")
    first.add(unit(5, seed=2))

    def fail(path: Path) -> str:
        raise OSError(f"disk full while hashing {path}")

    # The index file is written by then: the failure comes half-way through the new gallery.
    monkeypatch.setattr(gallery_module, "sha256_file", fail)
    with pytest.raises(OSError, match="disk full"):
        first.save(tmp_path / "g")
    monkeypatch.undo()
    assert len(Gallery.load(tmp_path / "g")) == 10
    # No staging directory is left; the lock file beside the gallery stays (a lock must outlive its holders).
    assert sorted(os.listdir(tmp_path)) == [".g.lock", "g"]


def test_empty_gallery_and_bad_vectors_are_clear_errors() -> None:
    empty = Gallery.create(DIM, "model")
    with pytest.raises(DataError, match="gallery is empty"):
        empty.search(unit(1), 5)
    with pytest.raises(ConfigError, match="row 1 has L2 norm 2.0000"):
        empty.add(np.stack([unit(1)[0], 2 * unit(1)[0]]))
    bad = unit(3)
    bad[2, 0] = np.nan
    with pytest.raises(DataError, match="row 2 holds NaN"):
        empty.add(bad)
    with pytest.raises(ConfigError, match="ef_search applies to HNSW"):
        Gallery.create(DIM, "model", "Flat", ef_search=10)
    with pytest.raises(ConfigError, match="'NotAnIndex'"):
        Gallery.create(DIM, "model", "NotAnIndex")


def test_ivf_needs_enough_training_vectors() -> None:
    ivf = Gallery.create(DIM, "model", "IVF32,Flat")
    # The default nprobe (64) is capped at the number of lists.
    assert ivf.info()["nprobe"] == 32 and ivf.info()["min_training_vectors"] == 32
    with pytest.raises(DataError, match="needs at least 32 vectors to train; got 10") as refused:
        ivf.add(unit(10))
    assert "give it at least 32 in its first add" in str(refused.value) and "train()" not in str(refused.value)
    assert len(ivf) == 0 and not ivf.is_trained
    ivf.add(unit(64))
    assert ivf.is_trained and len(ivf) == 64


def test_camera_filters_match_a_masked_reference() -> None:
    vectors, queries = unit(90), unit(6, seed=1)
    cams = np.arange(90) % 3
    searched = Gallery.create(DIM, "model")
    searched.add(vectors, items(90))
    query_cameras = ["0", "1", "2", "0", "1", "2"]
    result = searched.search(queries, 5, query_cameras=query_cameras, exclude_same_camera=True)
    for row, camera in enumerate(query_cameras):
        allowed = np.flatnonzero(cams != int(camera))
        expected = allowed[brute_force(queries[row : row + 1], vectors[allowed], 5)[0][0]]
        assert ids(result)[row] == expected.tolist()
    only_two = searched.search(queries, 5, cameras=["2"])
    assert {m.item.camera for row in only_two for m in row} == {"2"}
    with pytest.raises(ConfigError, match="one query camera per query: 6 queries, none"):
        searched.search(queries, 5, exclude_same_camera=True)


def test_rerank_equals_k_reciprocal_reranking_over_the_candidates() -> None:
    # Three tight identities and a query between two of them: neighbours of neighbours decide its order.
    rng = np.random.default_rng(4)
    centres = unit(3, seed=5)
    vectors = np.concatenate([c + 0.3 * unit(20, seed=10 + i) for i, c in enumerate(centres)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = centres[0] + 0.9 * centres[1] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
    query = (query / np.linalg.norm(query))[None, :].astype(np.float32)
    searched = Gallery.create(DIM, "model")
    searched.add(vectors)
    reranked = searched.search(query, 10, rerank=True, rerank_candidates=60)[0]
    reference = re_ranking(
        compute_distance(query, vectors), compute_distance(query, query), compute_distance(vectors, vectors)
    )[0]
    expected = np.argsort(reference, kind="stable")[:10]
    assert [m.id for m in reranked] == expected.tolist()
    distances = np.array([m.rerank_distance for m in reranked], dtype=np.float64)
    np.testing.assert_allclose(distances, reference[expected], atol=1e-5)
    plain = searched.search(query, 10)[0]
    assert [m.id for m in plain] != [m.id for m in reranked]
    assert reranked[0].score == pytest.approx(float(vectors[reranked[0].id] @ query[0]), abs=1e-5)


def test_image_names_give_identity_and_camera(tmp_path: Path) -> None:
    market = tmp_path / "0002_c3s1_000451_03.jpg"
    other = tmp_path / "photo.png"
    for path in (market, other):
        path.write_bytes(b"")
    parsed = item_for_image(market)
    assert (parsed.identity, parsed.camera, parsed.path) == ("2", "3", str(market))
    assert parsed.time == market.stat().st_mtime
    assert item_for_image(other).identity is None and item_for_image(other).camera is None


@pytest.fixture(scope="module")
def bundle_and_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.factories import make_bundle

    base = tmp_path_factory.mktemp("gallery-cli")
    bundle = make_bundle(base)
    return bundle.path, base / "synthetic"


def test_cli_build_add_search_remove_info(bundle_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, data = bundle_and_images
    index = tmp_path / "index"
    runner = CliRunner()
    built = runner.invoke(gallery, ["build", str(bundle), str(data / "bounding_box_test"), "--out", str(index),
                                    "--json"])
    assert built.exit_code == 0, built.output
    info = json.loads(built.output)
    test_images = sorted((data / "bounding_box_test").glob("*.jpg"))
    assert info["count"] == len(test_images) and info["dim"] == 512

    queries = sorted((data / "query").glob("*.jpg"))
    added = runner.invoke(gallery, ["add", str(index), str(bundle), str(queries[0]), "--json"])
    assert added.exit_code == 0, added.output
    new_id = json.loads(added.output)["added"][0]

    found = runner.invoke(search_command, [str(bundle), str(index), str(queries[0]), "--top-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    top = json.loads(found.output)[0]["matches"][0]
    # The query itself is in the gallery now: it is its own best match.
    assert top["id"] == new_id and top["score"] == pytest.approx(1.0, abs=1e-4) and top["path"] == str(queries[0])

    query_camera = item_for_image(queries[0]).camera
    filtered = runner.invoke(search_command, [str(bundle), str(index), str(queries[0]), "--top-k", "5",
                                              "--exclude-same-camera", "--rerank", "--json"])
    assert filtered.exit_code == 0, filtered.output
    matches = json.loads(filtered.output)[0]["matches"]
    assert len(matches) == 5 and all(m["camera"] != query_camera for m in matches)

    removed = runner.invoke(gallery, ["remove", str(index), str(new_id), "--path", str(test_images[0])])
    assert removed.exit_code == 0, removed.output
    shown = runner.invoke(gallery, ["info", str(index), "--json"])
    assert json.loads(shown.output)["count"] == len(test_images) - 1
    table = runner.invoke(search_command, [str(bundle), str(index), str(queries[1]), "--top-k", "2"])
    assert table.exit_code == 0 and "query" in table.output


def test_cli_refuses_another_models_gallery(bundle_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, data = bundle_and_images
    foreign = Gallery.create(512, "another-model")
    foreign.add(unit(3, dim=512))
    foreign.save(tmp_path / "foreign")
    query = min((data / "query").glob("*.jpg"))
    result = CliRunner().invoke(search_command, [str(bundle), str(tmp_path / "foreign"), str(query)])
    assert isinstance(result.exception, ConfigError)
    assert "another-model" in str(result.exception)
    exists = CliRunner().invoke(gallery, ["build", str(bundle), str(query), "--out", str(tmp_path / "foreign")])
    assert isinstance(exists.exception, ConfigError) and "--overwrite" in str(exists.exception)


def test_saved_index_is_an_id_map(tmp_path: Path) -> None:
    saved = Gallery.create(DIM, "model", "HNSW8")
    saved.add(unit(20))
    saved.save(tmp_path / "g")
    assert isinstance(faiss.read_index(str(tmp_path / "g" / "index.faiss")), faiss.IndexIDMap2)


def saved_gallery(path: Path, count: int = 10, model_id: str = "model", dim: int = DIM,
                  precision: str | None = None) -> Path:
    made = Gallery.create(dim, model_id, precision=precision)
    made.add(unit(count, dim=dim), items(count))
    made.save(path)
    return path


# ------------------------------------------------------------------------------------------------ writers
def test_update_gallery_saves_only_a_block_that_completes(tmp_path: Path) -> None:
    path = saved_gallery(tmp_path / "g")
    with update_gallery(path, "model", dim=DIM) as changed:
        assert changed.add(unit(5, seed=1)).tolist() == [10, 11, 12, 13, 14]
    assert len(Gallery.load(path)) == 15
    with pytest.raises(DataError, match="no item with id 99"), update_gallery(path) as changed:
        changed.add(unit(5, seed=2))
        changed.remove([99])
    unchanged = Gallery.load(path)
    assert len(unchanged) == 15 and unchanged.info()["next_id"] == 15
    assert remove_items(path, [0], ["img/1.jpg"]) == (2, 13)
    with pytest.raises(DataError, match="no item with the path 'img/404.jpg'"):
        remove_items(path, [2], ["img/404.jpg"])
    assert 2 in Gallery.load(path)


def test_save_refuses_to_undo_another_writers_change(tmp_path: Path) -> None:
    path = saved_gallery(tmp_path / "g")
    first, second = Gallery.load(path), Gallery.load(path)
    second.add(unit(3, seed=1))
    second.save(path)
    # Saved twice without reloading: the second save follows its own first.
    second.add(unit(1, seed=2))
    second.save(path)
    first.add(unit(2, seed=3))
    with pytest.raises(StaleGalleryError, match="changed by another writer after this copy was loaded"):
        first.save(path)
    assert len(Gallery.load(path)) == 14
    # Anywhere else it is a plain copy.
    first.save(tmp_path / "copy")
    assert len(Gallery.load(tmp_path / "copy")) == 12
    with pytest.raises(ConfigError, match="already exists"):
        Gallery.create(DIM, "model").save(path, overwrite=False)


def test_a_held_lock_makes_writers_fail_after_the_timeout(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved_gallery(tmp_path / "g")
    expected = f"gallery '{path}' is being written by another process"
    with lock_held_elsewhere(path):
        with pytest.raises(LockTimeoutError, match=expected), update_gallery(path, timeout=0.2):
            pytest.fail("the block ran without the lock")
        monkeypatch.setenv("EDGEREID_LOCK_TIMEOUT", "0.2")
        with pytest.raises(LockTimeoutError, match=f"{expected} .* raise EDGEREID_LOCK_TIMEOUT"):
            Gallery.load(path).save(path)
        refused = CliRunner().invoke(cli, ["gallery", "remove", str(path), "3"])
    assert refused.exit_code == 3, refused.output
    assert "is being written by another process" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert len(Gallery.load(path)) == 10


# --------------------------------------------------------------------------------------- what the CLI says
@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat", "SQ8", "PQ4"])
def test_info_is_the_same_before_saving_and_after_loading(tmp_path: Path, factory: str) -> None:
    made = Gallery.create(DIM, "model", factory)
    made.add(unit(300))
    made.save(tmp_path / "g")
    assert made.info() == Gallery.load(tmp_path / "g").info()


def test_another_precision_is_refused_for_adding_and_warned_for_searching(tmp_path: Path) -> None:
    fp32 = Gallery.create(DIM, "model", precision="fp32")
    int8_cpu: Any = SimpleNamespace(model_id="model", feature_dim=DIM, precision="int8_cpu")
    with pytest.raises(ConfigError, match=r"holds fp32 embeddings .* computes int8_cpu .*\(--precision fp32\)"):
        check_embedder(fp32, int8_cpu)
    with pytest.warns(UserWarning, match="holds fp32 embeddings .* computes int8_cpu"):
        check_embedder(fp32, int8_cpu, searching=True)
    same: Any = SimpleNamespace(model_id="model", feature_dim=DIM, precision="fp32")
    check_embedder(fp32, same)
    # A gallery that recorded no precision (made through the API without one) takes any.
    check_embedder(Gallery.create(DIM, "model"), int8_cpu)
    path = saved_gallery(tmp_path / "g", precision="int8_cpu")
    assert Gallery.load(path).precision == "int8_cpu"
    with pytest.raises(ConfigError, match="gallery precision 'int4'"):
        Gallery.create(DIM, "model", precision="int4")


# -------------------------------------------------------------------------------------- damaged galleries
def _header(root: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((root / "gallery.json").read_text())
    return loaded


def _reseal(root: Path) -> None:
    """Record the index's and the items' current checksums in the header, as a damaged or hostile writer would:
    the loader's content checks are then all that stands between the damage and the caller."""
    header = _header(root)
    header["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        for name, data in ((name, (root / name).read_bytes()) for name in ("index.faiss", "items.jsonl"))
    }
    (root / "gallery.json").write_text(json.dumps(header))


def _replace(name: str, make: Callable[[bytes], bytes], reseal: bool = False) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / name).write_bytes(make((root / name).read_bytes()))
        if reseal:
            _reseal(root)

    return damage


def _header_key(key: str, value: object) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        header = _header(root)
        if value is _DROP:
            del header[key]
        else:
            header[key] = value
        (root / "gallery.json").write_text(json.dumps(header))

    return damage


def _items_line(change: Callable[[dict[str, object]], object]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        lines = (root / "items.jsonl").read_text().splitlines()
        record = json.loads(lines[0])
        change(record)
        lines[0] = json.dumps(record)
        (root / "items.jsonl").write_text("\n".join(lines) + "\n")
        _reseal(root)

    return damage


def _other_index(root: Path) -> None:
    faiss.write_index(faiss.IndexFlatIP(DIM), str(root / "index.faiss"))
    _reseal(root)


def _duplicate_first_item(root: Path) -> None:
    lines = (root / "items.jsonl").read_text().splitlines()
    (root / "items.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    _reseal(root)


_DROP = object()
_NOISE = np.random.default_rng(7).bytes(512)
# Each damage, and what the one-line error must name.
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "header: random bytes": (_replace("gallery.json", lambda _: _NOISE), "gallery.json' is not a gallery header"),
    "header: empty": (_replace("gallery.json", lambda _: b""),
                      "gallery.json' is not a gallery header: not valid JSON"),
    "header: truncated": (_replace("gallery.json", lambda data: data[: len(data) // 2]), "not valid JSON"),
    "header: a JSON list": (_replace("gallery.json", lambda _: b"[1, 2]"), "expected a JSON object, got a JSON list"),
    "header: missing": (lambda root: (root / "gallery.json").unlink(), "gallery.json is missing"),
    "header: dim a string": (_header_key("dim", "x"), 'dim: expected a valid integer, got "x"'),
    "header: dim a float": (_header_key("dim", 16.0), "dim: expected a valid integer, got 16.0"),
    "header: files a list": (_header_key("files", []), "files: expected a valid dictionary, got []"),
    "header: one file's checksum": (_header_key("files", {"index.faiss": {"sha256": "0" * 64, "bytes": 1}}),
                                    "items.jsonl missing"),
    "header: tombstones of strings": (_header_key("tombstones", ["a"]), 'tombstones.0: expected a valid integer'),
    "header: next_id missing": (_header_key("next_id", _DROP), "next_id: missing"),
    "header: next_id in use": (_header_key("next_id", 3), "next_id 3, but id 9 is in use"),
    "header: count wrong": (_header_key("count", 99), "header count 99"),
    "header: version 2": (_header_key("version", 2), "format version 2; this edgereid reads version 1"),
    "header: precision unknown": (_header_key("precision", "int4"), "precision: expected 'fp32', 'fp16'"),
    "items: random bytes": (_replace("items.jsonl", lambda _: _NOISE), "items.jsonl' holds 512 bytes"),
    "items: empty": (_replace("items.jsonl", lambda _: b""), "items.jsonl' holds 0 bytes"),
    "items: truncated": (_replace("items.jsonl", lambda data: data[:-10]), "items.jsonl' holds"),
    "items: edited": (_replace("items.jsonl", lambda data: data.replace(b'"3"', b'"4"')),
                      "does not match the sha256"),
    "items: random bytes, resealed": (_replace("items.jsonl", lambda _: _NOISE, reseal=True),
                                      "items.jsonl' line 1 is not a gallery item: not valid JSON"),
    "items: truncated, resealed": (_replace("items.jsonl", lambda data: data[:-10], reseal=True),
                                   "items.jsonl' line 10 is not a gallery item"),
    "items: identity a number, resealed": (_items_line(lambda record: record.update(identity=5)),
                                           "line 1 is not a gallery item: identity: expected a valid string, got 5"),
    "items: id a string, resealed": (_items_line(lambda record: record.update(id="x")),
                                     'line 1 is not a gallery item: id: expected a valid integer, got "x"'),
    "items: id missing, resealed": (_items_line(lambda record: record.pop("id")),
                                    "line 1 is not a gallery item: id: missing"),
    "items: extra a list, resealed": (_items_line(lambda record: record.update(extra=[])),
                                      "extra: expected an object, got []"),
    "items: an id twice, resealed": (_duplicate_first_item, "line 11: id 0 is on an earlier line too"),
    "items: an id the index lacks, resealed": (_items_line(lambda record: record.update(id=50)),
                                               "index.faiss holds id 0 where items.jsonl"),
    "index: random bytes": (_replace("index.faiss", lambda _: _NOISE), "index.faiss' holds 512 bytes"),
    "index: missing": (lambda root: (root / "index.faiss").unlink(), "index.faiss' is missing"),
    "index: random bytes, resealed": (_replace("index.faiss", lambda _: _NOISE, reseal=True),
                                      "index.faiss' is not a faiss index (Index type"),
    "index: empty, resealed": (_replace("index.faiss", lambda _: b"", reseal=True),
                               "index.faiss' is not a faiss index"),
    "index: truncated, resealed": (_replace("index.faiss", lambda data: data[: len(data) // 2], reseal=True),
                                   "index.faiss' is not a faiss index (read error"),
    "index: another kind, resealed": (_other_index,
                                      "index.faiss' is a IndexFlatIP of dim 16; expected the IndexIDMap2"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_gallery_is_one_line_naming_the_file(tmp_path: Path, damage: str) -> None:
    change, expected = DAMAGES[damage]
    path = saved_gallery(tmp_path / "g")
    change(path)
    with pytest.raises(DataError) as refused:
        Gallery.load(path)
    message = str(refused.value)
    assert expected in message and "\n" not in message
    assert str(path) in message
    shown = CliRunner().invoke(cli, ["gallery", "info", str(path)])
    assert shown.exit_code == 2 and "Traceback" not in shown.output
    assert shown.output.strip().splitlines() == [f"error: {message}"]


def test_a_damaged_gallery_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    for damage in ("header: random bytes", "index: random bytes, resealed"):
        path = saved_gallery(tmp_path / damage.replace(" ", "_").replace(":", "").replace(",", ""))
        DAMAGES[damage][0](path)
        done = subprocess.run([sys.executable, "-m", "edgereid", "gallery", "info", str(path)], cwd=REPO,
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert DAMAGES[damage][1] in done.stderr


# ------------------------------------------------------------------------------------- the CLI on a real bundle
def _bundle_model_id(bundle: Path) -> str:
    model_id: str = json.loads((bundle / "manifest.json").read_text())["models"]["fp32"]["sha256"]
    return model_id


def test_cli_add_leaves_out_images_already_in_the_gallery(bundle_and_images: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    bundle, data = bundle_and_images
    index = tmp_path / "index"
    test_images = sorted((data / "bounding_box_test").glob("*.jpg"))
    runner = CliRunner()
    built = runner.invoke(cli, ["gallery", "build", str(bundle), *map(str, test_images[:4]), "--out", str(index)])
    assert built.exit_code == 0, built.output
    # The first two were added by the build; a copy of one under another folder is the same image.
    copy = tmp_path / "elsewhere" / test_images[0].name
    copy.parent.mkdir()
    copy.write_bytes(test_images[0].read_bytes())
    again = runner.invoke(cli, ["gallery", "add", str(index), str(bundle), str(test_images[1]), str(copy),
                                str(test_images[5]), "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report == {"added": [4], "already_present": [str(test_images[1]), str(copy)], "count": 5}
    assert "2 of 3 images are already in" in again.stderr and "--allow-duplicates" in again.stderr
    nothing = runner.invoke(cli, ["gallery", "add", str(index), str(bundle), str(test_images[2])])
    assert nothing.exit_code == 0 and "added no images" in nothing.stdout and "1 of 1 images" in nothing.stderr
    allowed = runner.invoke(cli, ["gallery", "add", str(index), str(bundle), str(test_images[2]),
                                  "--allow-duplicates", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout) == {"added": [5], "already_present": [], "count": 6}


def test_cli_build_and_info_agree_and_record_the_precision(bundle_and_images: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    bundle, data = bundle_and_images
    index = tmp_path / "index"
    built = CliRunner().invoke(cli, ["gallery", "build", str(bundle), str(data / "query"), "--out", str(index),
                                     "--json"])
    assert built.exit_code == 0, built.output
    shown = CliRunner().invoke(cli, ["gallery", "info", str(index), "--json"])
    assert json.loads(built.stdout) == json.loads(shown.stdout)
    assert json.loads(shown.stdout)["index_type"] == "IndexFlatIP"
    assert json.loads(shown.stdout)["precision"] == "fp32"


def test_cli_build_says_how_many_images_an_ivf_index_needs(bundle_and_images: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    bundle, data = bundle_and_images
    refused = CliRunner().invoke(cli, ["gallery", "build", str(bundle), str(data / "query"), "--out",
                                       str(tmp_path / "index"), "--index", "IVF1024,Flat"])
    assert refused.exit_code == 2 and not (tmp_path / "index").exists()
    assert "--index IVF1024,Flat needs at least 1024 images" in refused.output
    assert "choose a smaller --index" in refused.output and "train()" not in refused.output


def test_cli_notices_another_precision(bundle_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, data = bundle_and_images
    queries = sorted((data / "query").glob("*.jpg"))
    # A gallery recorded as int8_cpu (this bundle has FP32 only, so the embeddings are stand-ins).
    index = saved_gallery(tmp_path / "int8", model_id=_bundle_model_id(bundle), dim=512, precision="int8_cpu")
    searched = CliRunner().invoke(cli, ["search", str(bundle), str(index), str(queries[0]), "--json"])
    assert searched.exit_code == 0, searched.output
    assert "warning:" in searched.stderr and "holds int8_cpu embeddings" in searched.stderr
    assert "--precision int8_cpu" in searched.stderr and json.loads(searched.stdout)[0]["matches"]
    added = CliRunner().invoke(cli, ["gallery", "add", str(index), str(bundle), str(queries[0])])
    assert added.exit_code == 2 and "(--precision int8_cpu)" in added.output
    assert len(Gallery.load(index)) == 10


@pytest.mark.parametrize("damage", ["header: dim a string", "items: identity a number, resealed",
                                    "index: truncated, resealed"])
def test_cli_search_of_a_damaged_gallery_is_one_line(bundle_and_images: tuple[Path, Path], tmp_path: Path,
                                                     damage: str) -> None:
    bundle, data = bundle_and_images
    index = saved_gallery(tmp_path / "g", model_id=_bundle_model_id(bundle), dim=512)
    DAMAGES[damage][0](index)
    searched = CliRunner().invoke(cli, ["search", str(bundle), str(index), str(data / "query")])
    assert searched.exit_code == 2 and "Traceback" not in searched.output
    lines = searched.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(index) in lines[0]


@pytest.mark.slow
def test_concurrent_cli_adds_keep_every_image_under_its_own_id(bundle_and_images: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    """The issue's reproduction: `edgereid gallery add` processes on one gallery at once."""
    from edgereid.runtime.embedder import Embedder

    bundle, data = bundle_and_images
    index = tmp_path / "index"
    built = CliRunner().invoke(cli, ["gallery", "build", str(bundle), str(data / "bounding_box_test"), "--out",
                                     str(index)])
    assert built.exit_code == 0, built.output
    initial = len(Gallery.load(index))
    extra = sorted((data / "bounding_box_train").glob("*.jpg")) + sorted((data / "query").glob("*.jpg"))
    batches = [extra[start::3] for start in range(3)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "edgereid", "gallery", "add", str(index), str(bundle),
                          *map(str, batch), "--json", "-o", "threads=1"],
                         cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for batch in batches
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    reported = [json.loads(stdout)["added"] for stdout, _ in outputs]
    final = Gallery.load(index)
    assert len(final) == initial + len(extra)
    every_id = [item_id for ids in reported for item_id in ids]
    assert len(set(every_id)) == len(extra) == len(every_id)
    with Embedder(bundle) as embedder:
        for batch, ids in zip(batches, reported):
            assert [final.item(item_id).path for item_id in ids] == [str(path) for path in batch]
            best = final.search(embedder.embed_paths(batch), 1)
            assert [row[0].id for row in best] == ids
