"""Processes that write one gallery at once: every write is a read-modify-write under the gallery's lock, so none
loses another's items, no id is handed out twice, and readers that take no lock still load a whole gallery."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np

from edgereid.runtime.gallery import Gallery, GalleryItem, update_gallery

DIM = 16
WRITERS = 4
ROUNDS = 12
BATCH = 3


def batch_vectors(writer: int, round_number: int) -> np.ndarray:
    vectors = np.random.default_rng([writer, round_number]).standard_normal((BATCH, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_concurrently(path: str, writer: int, start_at: float) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """Add a batch per round, remove one of this writer's own items every third round, and read the gallery
    without the lock after each write; returns the ids added (with their round and row) and the ids removed."""
    time.sleep(max(start_at - time.time(), 0.0))
    added: dict[int, tuple[int, int]] = {}
    removed: list[int] = []
    for round_number in range(ROUNDS):
        vectors = batch_vectors(writer, round_number)
        metadata = [GalleryItem(extra={"writer": writer, "round": round_number, "row": row}) for row in range(BATCH)]
        with update_gallery(path, "model", dim=DIM) as gallery:
            ids = gallery.add(vectors, metadata)
        added.update({int(item_id): (round_number, row) for row, item_id in enumerate(ids)})
        if round_number % 3 == 2:
            victim = min(set(added) - set(removed))
            with update_gallery(path) as gallery:
                gallery.remove([victim])
            removed.append(victim)
        seen = Gallery.load(path)
        assert all(int(item_id) in seen for item_id in ids)
    return added, removed


def test_concurrent_writers_lose_nothing_and_reuse_no_id(tmp_path: Path) -> None:
    path = tmp_path / "gallery"
    Gallery.create(DIM, "model").save(path)
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with context.Pool(WRITERS) as pool:
        results = pool.starmap(write_concurrently, [(str(path), writer, start_at) for writer in range(WRITERS)])

    every_added = [item_id for added, _ in results for item_id in added]
    assert len(every_added) == len(set(every_added)) == WRITERS * ROUNDS * BATCH
    final = Gallery.load(path)
    expected_live = {
        item_id: (writer, *where)
        for writer, (added, removed) in enumerate(results)
        for item_id, where in added.items()
        if item_id not in removed
    }
    assert set(final.items()) == set(expected_live)
    assert final.info()["next_id"] == WRITERS * ROUNDS * BATCH
    live_ids = sorted(expected_live)
    vectors = np.stack([batch_vectors(writer, round_number)[row] for writer, round_number, row in
                        (expected_live[item_id] for item_id in live_ids)])
    for item_id, (writer, round_number, row) in expected_live.items():
        assert final.item(item_id).extra == {"writer": writer, "round": round_number, "row": row}
    best = final.search(vectors, 1)
    assert [matches[0].id for matches in best] == live_ids
