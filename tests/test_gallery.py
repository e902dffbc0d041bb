"""The faiss gallery against numpy references, its files on disk, and the gallery/search commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from edgereid.cli.gallery import gallery, search_command
from edgereid.errors import ConfigError, DataError
from edgereid.evaluation import compute_distance, re_ranking
from edgereid.runtime import gallery as gallery_module
from edgereid.runtime.gallery import Gallery, GalleryItem, item_for_image

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


def ids(matches: list[list[object]]) -> list[list[int]]:
    return [[m.id for m in row] for row in matches]  # type: ignore[attr-defined]


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
    searched = Gallery.create(DIM, "model", factory, **({"ef_search": 200} if "HNSW" in factory else {}))
    searched.add(vectors[:150], items(150))
    later = searched.add(vectors[150:], items(50))
    assert later.tolist() == list(range(150, 200))
    removed = [int(i) for i in brute_force(queries, vectors, 3)[0].ravel()] + [199]
    assert searched.remove(removed) == len(set(removed))
    assert len(searched) == 200 - len(set(removed))
    keep = np.setdiff1d(np.arange(200), removed)
    expected = keep[brute_force(queries, vectors[keep], 5)[0]]
    options = {"nprobe": 4} if "IVF" in factory else {}
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
    assert sorted(os.listdir(tmp_path)) == ["g"]


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
    with pytest.raises(DataError, match="needs at least 32 vectors to train; got 10"):
        ivf.add(unit(10))
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
    np.testing.assert_allclose([m.rerank_distance for m in reranked], reference[expected], atol=1e-5)
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
