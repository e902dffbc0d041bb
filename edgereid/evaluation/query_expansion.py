"""Average query expansion (alpha-QE) with the numbers of FastReID's ``aqe``, in numpy.

Every query and gallery feature is replaced by the mean of its ``qe_k`` most similar features (itself included,
cosine similarity over the union of query and gallery), each weighted by its similarity to the power ``alpha``;
similarities of the next round come from the L2-normalised result. The returned features are not normalised,
as in FastReID.
"""

from __future__ import annotations

import numpy as np

from edgereid.errors import ConfigError, DataError
from edgereid.evaluation.distance import as_feature_matrix, l2_normalize

CHUNK_ELEMENTS = 1 << 22


def average_query_expansion(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    qe_times: int = 1,
    qe_k: int = 5,
    alpha: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Expanded (query, gallery) float32 features; FastReID's config defaults (QE_TIME 1, QE_K 5, ALPHA 3)."""
    query = as_feature_matrix(query_feats, "query_feats")
    gallery = as_feature_matrix(gallery_feats, "gallery_feats")
    if query.shape[1] != gallery.shape[1]:
        raise DataError(
            f"query features have dimension {query.shape[1]} but gallery features have {gallery.shape[1]}; "
            "expected the same dimension"
        )
    features = np.concatenate([query, gallery], axis=0)
    num_all = features.shape[0]
    for name, value, low in (("qe_times", qe_times, 0), ("qe_k", qe_k, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    if qe_k > num_all:
        raise ConfigError(f"qe_k is {qe_k} but there are only {num_all} query and gallery features")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not np.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number; got {alpha!r}")

    normalized = l2_normalize(features)
    rows_per_block = max(1, CHUNK_ELEMENTS // num_all)
    for _ in range(qe_times):
        expanded = np.empty_like(features)
        for start in range(0, num_all, rows_per_block):
            similarity = normalized[start : start + rows_per_block] @ normalized.T
            if qe_k < num_all:
                top = np.argpartition(-similarity, qe_k - 1, axis=1)[:, :qe_k]
            else:
                top = np.broadcast_to(np.arange(num_all), similarity.shape)
            weights = np.power(np.take_along_axis(similarity, top, axis=1), np.float32(alpha))
            expanded[start : start + rows_per_block] = np.einsum(
                "bk,bkd->bd", weights, features[top]
            ) / np.float32(qe_k)
        features = expanded
        normalized = l2_normalize(features)
    return features[: query.shape[0]], features[query.shape[0] :]
