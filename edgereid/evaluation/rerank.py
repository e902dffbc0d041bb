"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with the numbers of FastReID's ``re_ranking``, in numpy.

FastReID builds the full (query + gallery)^2 distance matrix, argsorts every row of it and walks every image in
Python loops, with two more dense matrices of that size (the k-reciprocal weights ``V`` and their local expansion).
Only the first ``max(k1 + 1, k2)`` neighbours of each image are ever used, and ``V`` has a few dozen non-zero
entries per row, so this module

* streams the combined matrix in blocks of rows, squared and scaled exactly as FastReID scales it, keeping each
  row's nearest neighbours only (a partial sort instead of a full one);
* finds every image's k-reciprocal neighbours and their expansion with sorted-key set operations on all images at
  once;
* keeps ``V`` sparse, and computes the Jaccard distance of each query to each gallery image from the pairs of
  entries that share a column, a chunk of queries at a time.

Neighbours at equal distance are taken by image index (query images first, then gallery images), the order of a
stable sort; FastReID's unstable ``np.argsort`` may pick either. With distinct distances the neighbour sets are the
same, and the result equals FastReID's up to float32 summation order (about 1e-7).
"""

from __future__ import annotations

import numpy as np

from edgereid.errors import ConfigError, DataError

# Elements of a dense block handled at once (16 MiB in float32), and entry pairs of a Jaccard chunk.
CHUNK_ELEMENTS = 1 << 22
PAIR_CHUNK = 1 << 22


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """The (num_query, num_gallery) float32 re-ranked distance: ``(1 - lambda) * Jaccard + lambda * original``.

    ``original`` is the squared input distance divided by the largest squared distance to the same image, as in
    FastReID. ``k1`` is the size of the k-reciprocal neighbourhood, ``k2`` the number of neighbours averaged in
    the local query expansion (1 turns it off), ``lambda_value`` the weight of the original distance.
    """
    q_g, q_q, g_g = _validate(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)
    num_query, num_gallery = q_g.shape
    num_all = num_query + num_gallery

    scale = _column_max_squared(q_g, q_q, g_g)
    width = min(num_all, max(k1 + 1, k2))
    initial_rank = _nearest_neighbours(q_g, q_q, g_g, scale, width)

    rows, cols = _expanded_reciprocal_sets(initial_rank, k1, num_all)
    values = _reciprocal_weights(q_g, q_q, g_g, scale, rows, cols)
    indptr = np.searchsorted(rows, np.arange(num_all + 1))
    if k2 != 1:
        indptr, cols, values = _local_expansion(indptr, cols, values, initial_rank[:, :k2])
    return _combine(q_g, scale, indptr, cols, values, lambda_value)


def _validate(
    q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int, k2: int, lambda_value: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float, np.number)):
        raise ConfigError(f"lambda_value must be a number in [0, 1]; got {lambda_value!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ConfigError(f"lambda_value must be in [0, 1]; got {lambda_value!r}")
    q_g = _as_distances(q_g_dist, "q_g_dist")
    num_query, num_gallery = q_g.shape
    q_q = _as_distances(q_q_dist, "q_q_dist")
    g_g = _as_distances(g_g_dist, "g_g_dist")
    if q_q.shape != (num_query, num_query):
        raise DataError(
            f"q_q_dist has shape {q_q.shape}; expected ({num_query}, {num_query}) for the {num_query} queries "
            f"of q_g_dist {q_g.shape}"
        )
    if g_g.shape != (num_gallery, num_gallery):
        raise DataError(
            f"g_g_dist has shape {g_g.shape}; expected ({num_gallery}, {num_gallery}) for the {num_gallery} "
            f"gallery images of q_g_dist {q_g.shape}"
        )
    return q_g, q_q, g_g


def _as_distances(distances: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(distances)
    if array.ndim != 2 or 0 in array.shape:
        raise DataError(f"{name} must be a non-empty 2-D distance matrix; got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64)
    elif not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{name} must hold real distances; got dtype {array.dtype}")
    rows_per_block = max(1, CHUNK_ELEMENTS // array.shape[1])
    for start in range(0, array.shape[0], rows_per_block):
        block = array[start : start + rows_per_block]
        if not np.isfinite(block).all():
            bad_row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise DataError(f"{name} row {bad_row} holds NaN or infinite values; expected finite distances")
    return array


def _squared(block: np.ndarray) -> np.ndarray:
    """``np.power(block, 2).astype(np.float32)``, FastReID's first step, without an extra copy for float32."""
    squared = np.square(block)
    return squared.astype(np.float32, copy=False)


def _column_max_squared(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> np.ndarray:
    """The largest squared distance in each column of the combined matrix ``[[q_q, q_g], [q_g.T, g_g]]``.

    Squaring and rounding to float32 never decrease with |d|, so this is the square of the largest |d|.
    """

    def largest_magnitude(array: np.ndarray, axis: int) -> np.ndarray:
        return np.maximum(array.max(axis=axis), -array.min(axis=axis))

    query_part = np.maximum(largest_magnitude(q_q, 0), largest_magnitude(q_g, 1))
    gallery_part = np.maximum(largest_magnitude(q_g, 0), largest_magnitude(g_g, 0))
    scale = _squared(np.concatenate([query_part, gallery_part]))
    if not (scale > 0).all():
        bad = int(np.flatnonzero(~(scale > 0))[0])
        raise DataError(
            f"every distance to image {bad} of the combined query+gallery set is 0, so re-ranking cannot scale "
            "it; expected at least one non-zero distance per image"
        )
    return scale


def _scaled_columns(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, scale: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Rows ``start:stop`` of FastReID's ``original_dist``, transposed: an (all images, stop - start) block.

    ``original_dist[i, x]`` is the combined squared distance [x, i] over the largest one in column i, so these
    rows are columns ``start:stop`` of the combined matrix: slices of the inputs, without a transposed copy.
    """
    num_query = q_g.shape[0]
    if stop <= num_query:
        raw = np.concatenate([q_q[:, start:stop], q_g[start:stop].T], axis=0)
    else:
        begin, end = start - num_query, stop - num_query
        raw = np.concatenate([q_g[:, begin:end], g_g[:, begin:end]], axis=0)
    block = _squared(raw)
    block /= scale[None, start:stop]
    return block


def _nearest_neighbours(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, scale: np.ndarray, width: int
) -> np.ndarray:
    """The first ``width`` columns of FastReID's ``initial_rank``, ties ordered by index.

    For each image, the ``width``-th smallest value of a strided sample of its distances bounds its
    ``width``-th smallest distance from above: only the few distances under that bound are sorted.
    """
    num_query = q_g.shape[0]
    num_all = scale.size
    columns_per_block = max(1, CHUNK_ELEMENTS // num_all)
    stride = max(1, min(8, num_all // (4 * width)))
    ranks = np.empty((num_all, width), dtype=np.int64)
    bounds = sorted({*range(0, num_query, columns_per_block), *range(num_query, num_all, columns_per_block)})
    for start, stop in zip(bounds, bounds[1:] + [num_all]):
        block = _scaled_columns(q_g, q_q, g_g, scale, start, stop)
        sample = block[::stride]
        bound = (
            np.partition(sample, width - 1, axis=0)[width - 1] if sample.shape[0] > width else sample.max(0)
        )
        flat = np.flatnonzero(block <= bound[None, :])
        neighbour, image = np.divmod(flat, block.shape[1])
        values = block.ravel()[flat]
        order = np.lexsort((neighbour, values, image))
        image, neighbour = image[order], neighbour[order]
        rank_in_image = np.arange(image.size) - np.searchsorted(image, image)
        kept = rank_in_image < width
        ranks[start:stop] = neighbour[kept].reshape(stop - start, width)
    return ranks


def _reciprocal_pairs(neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) for every j among i's ``neighbours`` that also has i among its own, sorted by i then j."""
    num_all, width = neighbours.shape
    rows = np.repeat(np.arange(num_all, dtype=np.int64), width)
    cols = neighbours.ravel()
    keys = np.sort(rows * num_all + cols)
    found = _contains(keys, cols * num_all + rows)
    rows, cols = rows[found], cols[found]
    order = np.lexsort((cols, rows))
    return rows[order], cols[order]


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    position = np.searchsorted(sorted_keys, keys)
    position = np.minimum(position, sorted_keys.size - 1)
    found: np.ndarray = sorted_keys[position] == keys
    return found


def _expanded_reciprocal_sets(
    initial_rank: np.ndarray, k1: int, num_all: int
) -> tuple[np.ndarray, np.ndarray]:
    """(image, neighbour) entries of every image's expanded k-reciprocal set, sorted by image then neighbour.

    An image's set R(i) is its k1-reciprocal neighbours, grown by the k1/2-reciprocal set R'(c) of each c in R(i)
    when more than two thirds of R'(c) lies in R(i).
    """
    reciprocal_rows, reciprocal_cols = _reciprocal_pairs(initial_rank[:, : k1 + 1])
    half = int(np.around(k1 / 2.0)) + 1
    half_rows, half_cols = _reciprocal_pairs(initial_rank[:, :half])
    half_ptr = np.searchsorted(half_rows, np.arange(num_all + 1))
    half_size = np.diff(half_ptr)

    # For every pair (i, c) with c in R(i), every x in R'(c): is x in R(i)?
    sizes = half_size[reciprocal_cols]
    pair = np.repeat(np.arange(reciprocal_cols.size), sizes)
    members = half_cols[_segment_ranges(half_ptr[reciprocal_cols], sizes)]
    reciprocal_keys = reciprocal_rows * num_all + reciprocal_cols
    inside = _contains(reciprocal_keys, reciprocal_rows[pair] * num_all + members)
    overlap = np.bincount(pair, weights=inside.astype(np.float64), minlength=reciprocal_cols.size)
    # The same float comparison as FastReID's ``len(intersection) > 2. / 3 * len(candidate set)``.
    grows = overlap > 2.0 / 3 * sizes
    chosen = grows[pair]
    keys = np.concatenate([reciprocal_keys, reciprocal_rows[pair[chosen]] * num_all + members[chosen]])
    keys = np.unique(keys)
    return keys // num_all, keys % num_all


def _segment_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    ranges: np.ndarray = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return ranges


def _reciprocal_weights(
    q_g: np.ndarray,
    q_q: np.ndarray,
    g_g: np.ndarray,
    scale: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """FastReID's ``V[i, R(i)] = exp(-original_dist[i, R(i)])``, normalised to sum 1 over each row."""
    num_query = q_g.shape[0]
    # original_dist[i, x] is the combined squared distance [x, i] over the largest one in column i.
    raw = np.empty(rows.size, dtype=np.result_type(q_g, q_q, g_g))
    x_query, i_query = cols < num_query, rows < num_query
    for x_mask, i_mask, source, x_offset, i_offset, transposed in (
        (x_query, i_query, q_q, 0, 0, False),
        (x_query, ~i_query, q_g, 0, num_query, False),
        (~x_query, i_query, q_g, num_query, 0, True),
        (~x_query, ~i_query, g_g, num_query, num_query, False),
    ):
        entries = x_mask & i_mask
        x, i = cols[entries] - x_offset, rows[entries] - i_offset
        raw[entries] = source[i, x] if transposed else source[x, i]
    original = _squared(raw)
    original /= scale[rows]
    weights = np.exp(-original)
    starts = np.flatnonzero(np.diff(rows, prepend=-1))
    totals = np.add.reduceat(weights, starts)
    weights /= np.repeat(totals, np.diff(np.append(starts, rows.size)))
    return weights


def _local_expansion(
    indptr: np.ndarray, cols: np.ndarray, values: np.ndarray, neighbours: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse rows of FastReID's ``V_qe[i] = mean(V[initial_rank[i, :k2]])``."""
    num_all, k2 = neighbours.shape
    sources = neighbours.ravel()
    lengths = np.diff(indptr)[sources]
    entries = _segment_ranges(indptr[sources], lengths)
    targets = np.repeat(np.arange(num_all, dtype=np.int64).repeat(k2), lengths)
    keys = targets * num_all + cols[entries]
    # Stable: each entry's terms stay in neighbour order, the order of FastReID's float32 mean.
    order = np.argsort(keys, kind="stable")
    keys, summed = keys[order], values[entries][order]
    starts = np.flatnonzero(np.diff(keys, prepend=-1))
    means = np.add.reduceat(summed, starts) / np.float32(k2)
    unique_keys = keys[starts]
    new_indptr = np.searchsorted(unique_keys // num_all, np.arange(num_all + 1))
    return new_indptr, unique_keys % num_all, means.astype(np.float32, copy=False)


def _combine(
    q_g: np.ndarray,
    scale: np.ndarray,
    indptr: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    lambda_value: float,
) -> np.ndarray:
    """Jaccard distance of each query to each gallery image, blended with the scaled original distance."""
    num_query, num_gallery = q_g.shape
    num_all = scale.size
    # Gallery rows of V by column: for column k, the gallery images (and values) with V[j, k] != 0.
    gallery_entries = np.arange(int(indptr[num_query]), int(indptr[num_all]))
    gallery_rows = np.repeat(np.arange(num_gallery), np.diff(indptr[num_query:]))
    by_column = np.argsort(cols[gallery_entries], kind="stable")
    column_rows = gallery_rows[by_column]
    column_values = values[gallery_entries][by_column]
    column_ptr = np.searchsorted(cols[gallery_entries][by_column], np.arange(num_all + 1))
    column_size = np.diff(column_ptr)

    # Pairs each query entry makes: bound the work of a chunk of queries.
    query_entry_rows = np.repeat(np.arange(num_query), np.diff(indptr[: num_query + 1]))
    per_query = np.bincount(
        query_entry_rows, weights=column_size[cols[: indptr[num_query]]], minlength=num_query
    )
    query_pairs = np.concatenate([[0.0], np.cumsum(per_query)])
    rows_per_block = max(1, CHUNK_ELEMENTS // num_gallery)

    result = np.empty((num_query, num_gallery), dtype=np.float32)
    keep = np.float32(lambda_value)
    jaccard_weight = np.float32(1 - lambda_value)
    start = 0
    while start < num_query:
        stop = int(np.searchsorted(query_pairs, query_pairs[start] + PAIR_CHUNK, side="right")) - 1
        stop = min(max(stop, start + 1), start + rows_per_block, num_query)
        entries = np.arange(int(indptr[start]), int(indptr[stop]))
        entry_rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
        sizes = column_size[cols[entries]]
        partners = _segment_ranges(column_ptr[cols[entries]], sizes)
        shared = np.minimum(np.repeat(values[entries], sizes), column_values[partners])
        flat = np.repeat(entry_rows, sizes) * num_gallery + column_rows[partners]
        summed = np.bincount(flat, weights=shared, minlength=(stop - start) * num_gallery)
        overlap = summed.astype(np.float32).reshape(stop - start, num_gallery)
        jaccard = np.float32(1) - overlap / (np.float32(2) - overlap)
        original = _squared(q_g[start:stop])
        original /= scale[start:stop, None]
        result[start:stop] = jaccard * jaccard_weight + original * keep
        start = stop
    return result
