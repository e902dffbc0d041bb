"""Rank metrics, distances, re-ranking, query expansion and the paired bootstrap of ΔmAP for ReID evaluation, with
numpy only (no torch)."""

from edgereid.evaluation.bootstrap import DeltaInterval, paired_bootstrap_delta
from edgereid.evaluation.distance import METRICS, compute_distance, l2_normalize
from edgereid.evaluation.query_expansion import average_query_expansion
from edgereid.evaluation.rank import RankResult, evaluate_rank
from edgereid.evaluation.rerank import re_ranking

__all__ = [
    "METRICS",
    "DeltaInterval",
    "RankResult",
    "average_query_expansion",
    "compute_distance",
    "evaluate_rank",
    "l2_normalize",
    "paired_bootstrap_delta",
    "re_ranking",
]
