"""CMC, mAP and mINP under the Market-1501 protocol, with the numbers of FastReID's ``eval_market1501``.

For each query, gallery images of its identity seen by its own camera are ignored ("junk"), and queries left
without any gallery image of their identity are skipped. FastReID argsorts every distance row and walks it in a
Python loop; only the positions of the query's own identity matter, so this module sorts each row's values (several
times faster than an argsort), finds every same-identity image's position by binary search, and computes the
metrics for all queries of a chunk at once. Chunks of rows are handled by a few threads (numpy's sort releases the
GIL); the results do not depend on how many.

Images at equal distance are ranked by gallery index, the order of a stable argsort. FastReID's
``np.argsort(distmat, axis=1)`` uses numpy's default, unstable quicksort, whose order among equal distances depends
on the numpy build and CPU (its SIMD sorts); both give the same numbers unless an image of the query's identity ties
with another image, and this module is the same as FastReID with ``kind="stable"`` in every case.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgereid.errors import ConfigError, DataError

# Distances handled at once: bounds the sorted copy of a chunk of rows (16 MiB in float32) and its masks.
CHUNK_ELEMENTS = 1 << 22
# Threads sorting chunks of rows at once (each holds one chunk's sorted copy), at most one per available core.
MAX_THREADS = 4


@dataclass(frozen=True, eq=False)
class RankResult:
    """Rank metrics as fractions in [0, 1], like FastReID's (its evaluator multiplies them by 100 to print).

    ``cmc[k - 1]`` is the share of valid queries with a correct match within the first ``k`` gallery images; it
    has ``min(max_rank, num_gallery)`` entries. ``per_query_ap`` has one entry per query row, NaN where the query
    was skipped: whether a query counts depends on the labels only, so two models scored on the same query and
    gallery records give arrays aligned query by query (what a paired comparison of them needs).
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    per_query_ap: np.ndarray

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based)."""
        if not 1 <= k <= len(self.cmc):
            raise ConfigError(f"rank {k} is outside the CMC curve, which covers ranks 1 to {len(self.cmc)}")
        return float(self.cmc[k - 1])

    @property
    def rank1(self) -> float:
        return self.rank(1)

    @property
    def rank5(self) -> float:
        return self.rank(5)

    @property
    def rank10(self) -> float:
        return self.rank(10)

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """Plain Python values for JSON; rank-k entries only where the curve reaches k."""
        summary: dict[str, float | int | list[float]] = {"mAP": self.mAP, "mINP": self.mINP}
        summary.update({f"rank{k}": self.rank(k) for k in (1, 5, 10) if k <= len(self.cmc)})
        summary["num_valid_queries"] = self.num_valid_queries
        summary["cmc"] = [float(value) for value in self.cmc]
        return summary


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> RankResult:
    """Market-1501 rank metrics of a (num_query, num_gallery) distance matrix; smaller distance ranks first.

    ``max_rank`` is clipped to the gallery size, as FastReID does.
    """
    distances = np.asarray(distmat)
    if distances.ndim != 2 or 0 in distances.shape:
        raise DataError(
            f"distmat must be a non-empty 2-D array (num_query, num_gallery); got shape {distances.shape}"
        )
    if not (np.issubdtype(distances.dtype, np.floating) or np.issubdtype(distances.dtype, np.integer)):
        raise DataError(f"distmat must hold real numbers; got dtype {distances.dtype}")
    num_query, num_gallery = distances.shape
    query_pids = _as_labels(q_pids, "q_pids", num_query)
    gallery_pids = _as_labels(g_pids, "g_pids", num_gallery)
    query_camids = _as_labels(q_camids, "q_camids", num_query)
    gallery_camids = _as_labels(g_camids, "g_camids", num_gallery)
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ConfigError(f"max_rank must be a positive integer; got {max_rank!r}")

    # Gallery indices grouped by identity (ascending within each), to list each query's same-identity images.
    by_identity = np.argsort(gallery_pids, kind="stable")
    sorted_gallery_pids = gallery_pids[by_identity]

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(start + rows_per_chunk, num_query)
        pids = query_pids[start:stop]
        first = np.searchsorted(sorted_gallery_pids, pids, side="left")
        counts = np.searchsorted(sorted_gallery_pids, pids, side="right") - first
        queries = np.repeat(np.arange(stop - start), counts)
        gallery = by_identity[_segment_ranges(first, counts)]
        # Drops NaN labels, which sort together but are never equal.
        same = pids[queries] == gallery_pids[gallery]
        queries, gallery = queries[same], gallery[same]
        hits, ranks = _ranked_matches(
            distances[start:stop], queries, gallery, query_camids[start:stop], gallery_camids, first_row=start
        )
        return hits + start, ranks

    rows_per_chunk = max(1, CHUNK_ELEMENTS // num_gallery)
    starts = range(0, num_query, rows_per_chunk)
    threads = min(len(starts), _available_cores(), MAX_THREADS)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            chunks = list(pool.map(chunk, starts))
    else:
        chunks = [chunk(start) for start in starts]
    hit_queries = np.concatenate([queries for queries, _ in chunks])
    hit_ranks = np.concatenate([ranks for _, ranks in chunks])
    return _summarise(hit_queries, hit_ranks, min(int(max_rank), num_gallery), num_query)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _segment_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    offsets = np.cumsum(lengths) - lengths
    ranges: np.ndarray = np.arange(int(lengths.sum()), dtype=np.intp) + np.repeat(starts - offsets, lengths)
    return ranges


def _as_labels(labels: np.ndarray, name: str, expected_length: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != expected_length:
        raise DataError(f"{name} must be a 1-D array of {expected_length} labels; got shape {array.shape}")
    return array


def _ranked_matches(
    distances: np.ndarray,
    queries: np.ndarray,
    gallery: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    first_row: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, 0-based rank among the query's kept gallery images) of every correct match, by query then rank.

    ``queries`` and ``gallery`` list every (row, gallery image) pair of the same identity, sorted by row.
    """
    if np.issubdtype(distances.dtype, np.floating) and np.isnan(distances).any():
        bad_row = first_row + int(np.flatnonzero(np.isnan(distances).any(axis=1))[0])
        raise DataError(f"distmat row {bad_row} holds NaN; expected comparable distances")
    is_junk = query_camids[queries] == gallery_camids[gallery]
    positions = _stable_positions(distances, queries, gallery)

    order = np.lexsort((positions, queries))
    queries, positions, is_junk = queries[order], positions[order], is_junk[order]
    # A match moves up one place for every junk image ranked ahead of it, as junk is removed from the list.
    junk_before = np.cumsum(is_junk) - is_junk
    junk_ahead = junk_before - junk_before[_segment_starts(queries)]
    is_match = ~is_junk
    return queries[is_match], (positions - junk_ahead)[is_match]


def _stable_positions(distances: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Position of ``distances[rows, columns]`` in its row's stable ascending order."""
    values = distances[rows, columns]
    sorted_rows = np.sort(distances, axis=1)
    smaller = _count_sorted_below(sorted_rows, rows, values, inclusive=False)
    not_greater = _count_sorted_below(sorted_rows, rows, values, inclusive=True)
    positions = smaller
    # Equal distances rank by column: count the equal ones to the left, scanning only the rows with such a tie.
    tied = np.flatnonzero(not_greater - smaller > 1)
    row_length = distances.shape[1]
    column_index = np.arange(row_length)
    block = max(1, CHUNK_ELEMENTS // row_length)
    for start in range(0, tied.size, block):
        entries = tied[start : start + block]
        equal = distances[rows[entries]] == values[entries, None]
        equal &= column_index < columns[entries, None]
        positions[entries] += np.count_nonzero(equal, axis=1)
    return positions


def _count_sorted_below(
    sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, inclusive: bool
) -> np.ndarray:
    """How many entries of ``sorted_rows[rows]`` are below (or, if ``inclusive``, not above) ``values``.

    A binary search run for all values at once: numpy's searchsorted handles one sorted row per call.
    """
    row_length = sorted_rows.shape[1]
    low = np.zeros(len(rows), dtype=np.intp)
    high = np.full(len(rows), row_length, dtype=np.intp)
    for _ in range(row_length.bit_length()):
        searching = low < high
        middle = (low + high) // 2
        probe = sorted_rows[rows, np.minimum(middle, row_length - 1)]
        below = (probe <= values) if inclusive else (probe < values)
        low = np.where(searching & below, middle + 1, low)
        high = np.where(searching & ~below, middle, high)
    return low


def _segment_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """For each entry of a sorted array, the index of the first entry with the same key."""
    return np.searchsorted(sorted_keys, sorted_keys, side="left")


def _summarise(queries: np.ndarray, ranks: np.ndarray, max_rank: int, num_query: int) -> RankResult:
    """Metrics from every correct match's (query, kept rank), sorted by query then rank."""
    if queries.size == 0:
        raise DataError(
            "no query has a gallery image of its identity from another camera, so no rank metric exists; "
            "check that q_pids/g_pids and q_camids/g_camids are the query and gallery labels"
        )
    entry = np.arange(queries.size)
    segment_start = _segment_starts(queries)
    first = np.flatnonzero(segment_start == entry)
    num_relevant = np.diff(np.append(first, queries.size))
    last = first + num_relevant - 1

    matches_so_far = entry - segment_start + 1
    average_precision = np.add.reduceat(matches_so_far / (ranks + 1.0), first) / num_relevant
    # INP: the share of the list a user must read to find every match, num_relevant / (rank of the last one).
    inverse_negative_penalty = num_relevant / (ranks[last] + 1.0)
    first_ranks = ranks[first]
    first_hits = np.bincount(first_ranks[first_ranks < max_rank], minlength=max_rank)
    # float32 counts over a float32 count of queries: the same rounding as FastReID's float32 CMC.
    cmc = np.cumsum(first_hits).astype(np.float32) / np.float32(first.size)
    per_query_ap = np.full(num_query, np.nan)
    per_query_ap[queries[first]] = average_precision
    return RankResult(
        mAP=float(np.mean(average_precision)),
        cmc=cmc,
        mINP=float(np.mean(inverse_negative_penalty)),
        num_valid_queries=int(first.size),
        per_query_ap=per_query_ap,
    )
