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
    if aqe:
        query_features, gallery_features = average_query_expansion(query_features, gallery_features)
    distances = compute_distance(query_features, gallery_features, metric)
    if rerank:
        distances = re_ranking(
            distances,
            compute_distance(query_features, query_features, metric),
            compute_distance(gallery_features, gallery_features, metric),
        )
    return evaluate_rank(
        distances,
        np.array([record.pid for record in query]),
        np.array([record.pid for record in gallery]),
        np.array([record.camid for record in query]),
        np.array([record.camid for record in gallery]),
        max_rank=max_rank,
    )
