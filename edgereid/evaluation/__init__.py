"""Rank metrics, distances, re-ranking and query expansion for ReID evaluation, with numpy only (no torch)."""

from edgereid.evaluation.distance import METRICS, compute_distance, l2_normalize
from edgereid.evaluation.query_expansion import average_query_expansion
from edgereid.evaluation.rank import RankResult, evaluate_rank
from edgereid.evaluation.rerank import re_ranking

__all__ = [
    "METRICS",
    "RankResult",
    "average_query_expansion",
    "compute_distance",
    "evaluate_rank",
    "l2_normalize",
    "re_ranking",
]
