"""Scoring a model's query and gallery features under the Market protocol, with optional query expansion and
re-ranking: the one function training, `edgereid eval` and the on-device runtime all use (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgereid.data.records import ImageRecord
from edgereid.evaluation.distance import Metric, compute_distance
from edgereid.evaluation.query_expansion import average_query_expansion
from edgereid.evaluation.rank import RankResult, evaluate_rank
from edgereid.evaluation.rerank import re_ranking


def query_gallery_distances(
    query_features: np.ndarray, gallery_features: np.ndarray, *, metric: Metric = "cosine", rerank: bool = False,
    aqe: bool = False,
) -> np.ndarray:
    """The query × gallery distance matrix that :func:`evaluate_features` ranks by."""
    if aqe:
        query_features, gallery_features = average_query_expansion(query_features, gallery_features)
    distances = compute_distance(query_features, gallery_features, metric)
    if rerank:
        distances = re_ranking(
            distances,
            compute_distance(query_features, query_features, metric),
            compute_distance(gallery_features, gallery_features, metric),
        )
    return np.asarray(distances)


def rank_distances(
    distances: np.ndarray, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], *, max_rank: int = 50
) -> RankResult:
    """mAP, CMC and mINP of a query × gallery distance matrix in the order of the records."""
    return evaluate_rank(
        distances,
        np.array([record.pid for record in query]),
        np.array([record.pid for record in gallery]),
        np.array([record.camid for record in query]),
        np.array([record.camid for record in gallery]),
        max_rank=max_rank,
    )


def evaluate_features(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    *,
    metric: Metric = "cosine",
    rerank: bool = False,
    aqe: bool = False,
    max_rank: int = 50,
) -> RankResult:
    """mAP, CMC and mINP of features in the order of ``query`` and ``gallery`` records."""
    distances = query_gallery_distances(query_features, gallery_features, metric=metric, rerank=rerank, aqe=aqe)
    return rank_distances(distances, query, gallery, max_rank=max_rank)
