"""How sure is a ΔmAP? A paired bootstrap over queries (numpy only).

mAP is a mean over queries, so two models scored on the same queries differ by the mean of their per-query AP
differences. Resampling queries with replacement, and taking the same queries for both models, keeps what the
models share (an easy or a hard query is easy or hard for both) out of the spread: the interval reflects only
how much their per-query differences vary, and how many queries there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgereid.errors import ConfigError, DataError

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
# Resampled query indices drawn at once: bounds the index block (32 MiB of int64) on sets of many queries.
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class DeltaInterval:
    """A candidate's mAP minus a reference's, in mAP points (percent), with its bootstrap percentile interval."""

    delta_points: float
    low_points: float
    high_points: float
    num_queries: int
    confidence: float

    @property
    def half_width_points(self) -> float:
        return (self.high_points - self.low_points) / 2.0

    def too_small_for(self, tolerance_points: float) -> bool:
        """Whether the queries are too few to judge a ±``tolerance_points`` budget: the interval's half-width
        exceeds it, so even a model that scores exactly like the reference has an interval reaching beyond the
        budget, and pass or fail says more about which queries were drawn than about the model."""
        return self.half_width_points > tolerance_points

    def too_small_message(self, tolerance_points: float) -> str:
        return (
            f"the evaluation set of {self.num_queries:,} queries is too small to judge a ±{tolerance_points:g}-point "
            f"mAP budget: the {self.confidence:.0%} interval of ΔmAP is [{self.low_points:+.2f}, "
            f"{self.high_points:+.2f}] points"
        )


def paired_bootstrap_delta(
    reference_ap: np.ndarray,
    candidate_ap: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> DeltaInterval:
    """ΔmAP (candidate − reference) and its paired bootstrap percentile interval from per-query APs.

    Both arrays hold one AP per query, the same queries in the same order (``RankResult.per_query_ap``); NaN marks
    a query without a valid match and must mark the same queries on both sides. The same ``seed`` gives the same
    interval.
    """
    reference = np.asarray(reference_ap, dtype=np.float64)
    candidate = np.asarray(candidate_ap, dtype=np.float64)
    if reference.ndim != 1 or reference.shape != candidate.shape:
        raise DataError(
            "per-query APs must be two 1-D arrays over the same queries; got shapes "
            f"{reference.shape} and {candidate.shape}"
        )
    skipped = np.isnan(reference)
    if not np.array_equal(skipped, np.isnan(candidate)):
        raise DataError(
            "the per-query APs skip different queries, so they were not scored on the same query/gallery records"
        )
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    differences = (candidate - reference)[~skipped] * 100.0
    count = differences.size
    if count == 0:
        raise DataError("no query has a valid match, so there is no ΔmAP to bound")

    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, BLOCK_ELEMENTS // count)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        means[start:stop] = differences[rng.integers(0, count, size=(stop - start, count))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return DeltaInterval(
        delta_points=float(differences.mean()),
        low_points=float(low),
        high_points=float(high),
        num_queries=int(count),
        confidence=confidence,
    )
