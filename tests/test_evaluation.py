"""edgereid.evaluation against hand-computed cases and naive per-query reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import ConfigError, DataError
from edgereid.evaluation import (
    average_query_expansion,
    compute_distance,
    evaluate_rank,
    paired_bootstrap_delta,
    re_ranking,
)
from edgereid.evaluation import rank as rank_module


def naive_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """A straightforward per-query loop (torchreid's eval_market1501), stable order among ties."""
    num_g = distmat.shape[1]
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw = (g_pids[order] == q_pids[q])[keep].astype(np.int32)
        if not raw.any():
            continue
        cum = raw.cumsum()
        last = np.flatnonzero(raw).max()
        all_inp.append(cum[last] / (last + 1.0))
        all_cmc.append(np.minimum(cum, 1)[:max_rank])
        all_ap.append((cum / np.arange(1.0, len(raw) + 1) * raw).sum() / raw.sum())
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))


def test_hand_computed_rank_metrics():
    # Query 0 (pid 1, cam 0); gallery sorted by distance: g0 pid1 cam0 (junk, removed), g1 pid2, g2 pid1 cam1,
    # g3 pid1 cam2. Kept list: [g1 x, g2 hit, g3 hit] -> AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, first hit rank 2.
    # Query 1 (pid 2, cam 1): kept list [g0 x, g1 hit, g2 x, g3 x] -> AP = 1/2, INP = 1/2, first hit rank 2.
    # Query 2 (pid 3): no gallery image of pid 3 -> skipped.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    g_pids, g_cams = np.array([1, 2, 1, 1]), np.array([0, 0, 1, 2])
    result = evaluate_rank(distmat, np.array([1, 2, 3]), g_pids, np.array([0, 1, 0]), g_cams)
    assert result.num_valid_queries == 2
    assert result.mAP == pytest.approx((7 / 12 + 1 / 2) / 2)
    assert result.mINP == pytest.approx((2 / 3 + 1 / 2) / 2)
    np.testing.assert_allclose(result.cmc, [0.0, 1.0, 1.0, 1.0])


def test_rank_matches_naive_loop_with_ties():
    rng = np.random.default_rng(0)
    distmat = rng.integers(0, 5, (40, 120)).astype(np.float32)  # many ties
    q_pids, g_pids = rng.integers(0, 10, 40), rng.integers(0, 10, 120)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 120)
    cmc, m_ap, m_inp = naive_market1501(distmat, q_pids, g_pids, q_cams, g_cams)
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(result.cmc, cmc)
    assert result.mAP == pytest.approx(m_ap) and result.mINP == pytest.approx(m_inp)


def test_distances_match_direct_formulas():
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((7, 8)).astype(np.float32)
    cos = np.array([[1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in g] for a in q])
    euc = np.array([[((a - b) ** 2).sum() for b in g] for a in q])
    np.testing.assert_allclose(compute_distance(q, g, "cosine"), cos, atol=1e-5)
    np.testing.assert_allclose(compute_distance(q, g, "euclidean"), euc, rtol=1e-4, atol=1e-4)


def naive_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """A loop transcription of Zhong et al.'s k-reciprocal re-ranking (stable argsort)."""
    dist = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))
    n, nq = dist.shape[0], q_g.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0)) + 1

    def reciprocal(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = set(r)
        for c in r:
            rc = [j for j in rank[c, :half] if c in rank[j, :half]]
            if len(set(rc) & set(r)) > 2.0 / 3 * len(rc):
                expansion |= set(rc)
        idx = np.array(sorted(expansion), dtype=int)
        w = np.exp(-dist[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((nq, n), dtype=np.float32)
    for i in range(nq):
        for j in range(n):
            t = np.minimum(v[i], v[j]).sum()
            jac[i, j] = 1 - t / (2 - t)
    return (jac * (1 - lambda_value) + dist[:nq] * lambda_value)[:, nq:]


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (3, 8, 1.0), (4, 3, 0.5)])
def test_re_ranking_matches_naive_loop(k1, k2, lam):
    rng = np.random.default_rng(k1)
    f = rng.standard_normal((50, 6))
    d = rng.random((50, 50)) + np.linalg.norm(f[:, None] - f[None], axis=2)
    q_g, q_q, g_g = d[:12, 12:], d[:12, :12], d[12:, 12:]  # asymmetric on purpose
    np.testing.assert_allclose(
        re_ranking(q_g, q_q, g_g, k1, k2, lam), naive_re_ranking(q_g, q_q, g_g, k1, k2, lam), atol=1e-5
    )


def naive_aqe(q, g, times, k, alpha):
    feats = np.concatenate([q, g]).astype(np.float64)
    norm = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for _ in range(times):
        sims = norm @ norm.T
        new = []
        for s in sims:
            top = np.argsort(-s, kind="stable")[:k]
            new.append((feats[top] * (s[top] ** alpha)[:, None]).mean(0))
        feats = np.stack(new)
        norm = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return feats[: len(q)], feats[len(q) :]


def test_aqe_matches_naive():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((9, 5)).astype(np.float32), rng.standard_normal((20, 5)).astype(np.float32)
    for times, k in [(1, 5), (2, 3)]:
        for got, want in zip(average_query_expansion(q, g, times, k, 3.0), naive_aqe(q, g, times, k, 3.0)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bad_inputs():
    q = np.ones((2, 3), dtype=np.float32)
    q[1, 0] = np.nan
    with pytest.raises(DataError, match="row 1 holds NaN"):
        compute_distance(q, np.ones((2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="dimension"):
        compute_distance(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(DataError, match="no query"):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([2, 2]), np.array([0]), np.array([1, 1]))
    with pytest.raises(DataError, match="q_pids"):
        evaluate_rank(np.zeros((1, 2)), np.array([1, 2]), np.array([2, 2]), np.array([0]), np.array([1, 1]))
    d = np.random.default_rng(0).random((3, 4))
    with pytest.raises(DataError, match="g_g_dist has shape"):
        re_ranking(d, np.ones((3, 3)), np.ones((3, 3)))
    with pytest.raises(ConfigError, match="k1"):
        re_ranking(d, np.ones((3, 3)), np.ones((4, 4)), k1=0)
    with pytest.raises(ConfigError, match="lambda_value"):
        re_ranking(d, np.ones((3, 3)), np.ones((4, 4)), lambda_value=1.5)
    with pytest.raises(DataError, match="NaN"):
        re_ranking(d, np.full((3, 3), np.nan), np.ones((4, 4)))


# --- per-query AP and the paired bootstrap of ΔmAP ---------------------------------------------------------------


def test_per_query_ap_averages_to_map_and_marks_skipped_queries(monkeypatch: pytest.MonkeyPatch):
    # The hand-computed case above: APs 7/12 and 1/2, query 2 (no gallery image of its identity) skipped.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    result = evaluate_rank(distmat, np.array([1, 2, 3]), np.array([1, 2, 1, 1]), np.array([0, 1, 0]),
                           np.array([0, 0, 1, 2]))
    np.testing.assert_allclose(result.per_query_ap[:2], [7 / 12, 1 / 2])
    assert np.isnan(result.per_query_ap[2])
    assert "per_query_ap" not in result.to_dict()
    # Many queries in chunks of 7 rows, some skipped: the per-query APs are the naive loop's, their mean the mAP.
    monkeypatch.setattr(rank_module, "CHUNK_ELEMENTS", 7 * 90)
    rng = np.random.default_rng(3)
    distmat = rng.random((60, 90)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 25, 60), rng.integers(0, 20, 90)
    q_cams, g_cams = rng.integers(0, 3, 60), rng.integers(0, 3, 90)
    naive = []
    for q in range(60):
        keep = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        ap = naive_market1501(distmat[q : q + 1, keep], q_pids[q : q + 1], g_pids[keep], q_cams[q : q + 1],
                              g_cams[keep])[1] if (g_pids[keep] == q_pids[q]).any() else np.nan
        naive.append(ap)
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    skipped = np.isnan(naive)
    assert 0 < skipped.sum() < 60 and result.num_valid_queries == 60 - skipped.sum()
    np.testing.assert_array_equal(np.isnan(result.per_query_ap), skipped)
    np.testing.assert_allclose(result.per_query_ap[~skipped], np.asarray(naive)[~skipped])
    assert np.nanmean(result.per_query_ap) == pytest.approx(result.mAP, rel=1e-12)


def test_bootstrap_of_identical_aps_is_zero():
    ap = np.random.default_rng(0).random(50)
    interval = paired_bootstrap_delta(ap, ap.copy())
    assert (interval.delta_points, interval.low_points, interval.high_points) == (0.0, 0.0, 0.0)
    assert interval.num_queries == 50 and not interval.too_small_for(0.0)


def test_bootstrap_of_a_constant_shift_is_exactly_the_shift():
    # APs on a grid of 1/64 and a shift of 1/16: every difference, mean and percentile is exact in binary.
    reference = np.random.default_rng(1).integers(0, 48, 200) / 64
    interval = paired_bootstrap_delta(reference, reference + 1 / 16)
    assert (interval.delta_points, interval.low_points, interval.high_points) == (6.25, 6.25, 6.25)
    down = paired_bootstrap_delta(reference + 1 / 16, reference)
    assert (down.low_points, down.high_points) == (-6.25, -6.25)


def _mixture(num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """A candidate losing 0.05 AP on every fifth query and matching the reference elsewhere: ΔmAP −1 point exactly,
    per-query differences with a standard deviation of 0.05 · sqrt(0.2 · 0.8) = 0.02 AP (2 points)."""
    reference = np.random.default_rng(num_queries).uniform(0.3, 0.9, num_queries)
    candidate = reference.copy()
    candidate[::5] -= 0.05
    return reference, candidate


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_queries():
    widths = {}
    for count in (100, 1600):
        interval = paired_bootstrap_delta(*_mixture(count))
        assert interval.delta_points == pytest.approx(-1.0, abs=1e-9)
        assert interval.low_points < -1.0 < interval.high_points
        # The normal approximation of the mean's 95 % interval: ±1.96 · 2 / sqrt(n) points.
        assert interval.half_width_points == pytest.approx(1.96 * 2 / np.sqrt(count), rel=0.15)
        widths[count] = interval.high_points - interval.low_points
    assert widths[100] / widths[1600] == pytest.approx(4.0, rel=0.2)  # 16× the queries, a quarter the width


def test_bootstrap_is_seeded():
    reference, candidate = _mixture(300)
    first, again = paired_bootstrap_delta(reference, candidate), paired_bootstrap_delta(reference, candidate)
    assert (first.low_points, first.high_points) == (again.low_points, again.high_points)
    other = paired_bootstrap_delta(reference, candidate, seed=1)
    assert (other.low_points, other.high_points) != (first.low_points, first.high_points)
    assert other.delta_points == first.delta_points


def test_bootstrap_skips_unmatched_queries_and_refuses_misaligned_ones():
    reference, candidate = _mixture(100)
    with_skipped = paired_bootstrap_delta(np.append(reference, np.nan), np.append(candidate, np.nan))
    assert with_skipped == paired_bootstrap_delta(reference, candidate)
    with pytest.raises(DataError, match="skip different queries"):
        paired_bootstrap_delta(np.append(reference, np.nan), np.append(candidate, 0.5))
    with pytest.raises(DataError, match="same queries"):
        paired_bootstrap_delta(reference, candidate[:-1])
    with pytest.raises(DataError, match="no query has a valid match"):
        paired_bootstrap_delta(np.array([np.nan]), np.array([np.nan]))
    with pytest.raises(ConfigError, match="confidence"):
        paired_bootstrap_delta(reference, candidate, confidence=1.0)


def test_too_few_queries_for_the_budget_is_named():
    # 10 queries, one of them 0.3 AP worse: ΔmAP −3 points, an interval far wider than a ±0.5-point budget.
    reference = np.full(10, 0.6)
    candidate = reference.copy()
    candidate[0] = 0.3
    interval = paired_bootstrap_delta(reference, candidate)
    assert interval.low_points == pytest.approx(-9.0) and interval.high_points == 0.0
    assert interval.too_small_for(0.5) and not interval.too_small_for(5.0)
    assert interval.too_small_message(0.5) == (
        "the evaluation set of 10 queries is too small to judge a ±0.5-point mAP budget: the 95% interval of ΔmAP is "
        "[-9.00, +0.00] points"
    )
