"""The losses against hand-computed values (arithmetic in the comments) and naive reference implementations."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from edgereid.errors import ConfigError
from edgereid.losses import (
    LossConfig,
    ReIDCriterion,
    adaptive_cross_entropy_label_smoothing,
    batch_hard_triplets,
    cosine_dist,
    cross_entropy_label_smoothing,
    distance_triplet_loss,
    euclidean_dist,
    feature_distances,
    kl_mutual_loss,
    metric_mutual_loss,
    mined_triplet_loss,
    pairwise_circle_loss,
    parse_loss_config,
    triplet_loss,
)

LN = math.log

# Two samples, three classes; the logits are log-probabilities, so softmax gives the probabilities back:
# sample 0 p = (0.5, 0.25, 0.25), target 0; sample 1 p = (0.2, 0.6, 0.2), target 1.
PROBS = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]], dtype=torch.float64)
LOGITS = PROBS.log()
TARGETS = torch.tensor([0, 1])

# A hand-made distance matrix of 4 samples, identities 0 0 1 1.
#        0    1    2    3
# 0   0.0  0.5  1.0  0.3
# 1   0.5  0.0  0.9  0.8
# 2   1.0  0.9  0.0  0.6
# 3   0.3  0.8  0.6  0.0
DIST = torch.tensor(
    [[0.0, 0.5, 1.0, 0.3], [0.5, 0.0, 0.9, 0.8], [1.0, 0.9, 0.0, 0.6], [0.3, 0.8, 0.6, 0.0]],
    dtype=torch.float64,
)
DIST_TARGETS = torch.tensor([0, 0, 1, 1])


def pk_features(p: int = 3, k: int = 3, dim: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(p * k, dim, generator=generator, dtype=torch.float64)
    return features, torch.arange(p).repeat_interleave(k)


# --- cross-entropy -------------------------------------------------------------------------------------------


def test_ce_without_smoothing_is_cross_entropy() -> None:
    # -(ln 0.5 + ln 0.6) / 2 = (0.693147 + 0.510826) / 2 = 0.601986
    loss = cross_entropy_label_smoothing(LOGITS, TARGETS, epsilon=0.0)
    assert loss.item() == pytest.approx(-(LN(0.5) + LN(0.6)) / 2)
    assert loss.item() == pytest.approx(0.601986, abs=1e-6)
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 10, 5, 5, 2])
    torch.testing.assert_close(
        cross_entropy_label_smoothing(logits, targets, 0.0), F.cross_entropy(logits, targets)
    )


def test_ce_smoothing_is_fastreids_epsilon_over_k_minus_1() -> None:
    # eps = 0.1, K = 3: target class 1 - eps = 0.9, each other class eps / (K - 1) = 0.05.
    # sample 0: -(0.9 ln 0.5 + 0.05 ln 0.25 + 0.05 ln 0.25) = 0.9 * 0.693147 + 0.1 * 1.386294 = 0.762462
    # sample 1: -(0.9 ln 0.6 + 0.05 ln 0.2 + 0.05 ln 0.2)   = 0.9 * 0.510826 + 0.1 * 1.609438 = 0.620687
    # mean = (0.762462 + 0.620687) / 2 = 0.691574
    sample_0 = -(0.9 * LN(0.5) + 0.1 * LN(0.25))
    sample_1 = -(0.9 * LN(0.6) + 0.1 * LN(0.2))
    per_sample = cross_entropy_label_smoothing(LOGITS, TARGETS, 0.1, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([sample_0, sample_1], dtype=torch.float64))
    loss = cross_entropy_label_smoothing(LOGITS, TARGETS, 0.1)
    assert loss.item() == pytest.approx(0.691574, abs=1e-6)
    # torch's label_smoothing=ls puts ls / K on each class: the same target when ls = eps * K / (K - 1), and a
    # different one (hence a different loss) for ls = eps.
    torch.testing.assert_close(loss, F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.1 * 3 / 2))
    assert abs(loss.item() - F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.1).item()) > 1e-3


def test_ce_ignore_index_and_single_class() -> None:
    targets = torch.tensor([0, -100])
    # Only sample 0 counts: 0.762462 (above).
    loss = cross_entropy_label_smoothing(LOGITS, targets, 0.1)
    assert loss.item() == pytest.approx(-(0.9 * LN(0.5) + 0.1 * LN(0.25)))
    assert cross_entropy_label_smoothing(LOGITS, torch.tensor([-100, -100]), 0.1).item() == 0.0
    # K = 1: p(target) = 1, nothing to smooth towards, loss 0 (no division by K - 1 = 0).
    assert (
        cross_entropy_label_smoothing(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), 0.1).item() == 0.0
    )


def test_adaptive_ce_uses_alpha_times_detached_target_probability() -> None:
    # alpha = 0.2: sample 0 eps = 0.2 * 0.5 = 0.10 -> 0.9 / 0.05 / 0.05; loss 0.762462 as above
    #              sample 1 eps = 0.2 * 0.6 = 0.12 -> 0.06 / 0.88 / 0.06
    #                       loss -(0.88 ln 0.6 + 0.12 ln 0.2) = 0.449527 + 0.193133 = 0.642660
    # mean = (0.762462 + 0.642660) / 2 = 0.702561
    logits = LOGITS.clone().requires_grad_()
    loss = adaptive_cross_entropy_label_smoothing(logits, TARGETS, alpha=0.2)
    expected = (-(0.9 * LN(0.5) + 0.1 * LN(0.25)) - (0.88 * LN(0.6) + 0.12 * LN(0.2))) / 2
    assert loss.item() == pytest.approx(expected)
    assert loss.item() == pytest.approx(0.702561, abs=1e-6)
    # With eps a constant, d loss / d logits = (p - q) / N:
    # sample 0: ((0.5, 0.25, 0.25) - (0.9, 0.05, 0.05)) / 2 = (-0.2, 0.1, 0.1)
    # sample 1: ((0.2, 0.6, 0.2) - (0.06, 0.88, 0.06)) / 2 = (0.07, -0.14, 0.07)
    loss.backward()
    assert logits.grad is not None
    torch.testing.assert_close(
        logits.grad, torch.tensor([[-0.2, 0.1, 0.1], [0.07, -0.14, 0.07]], dtype=torch.float64)
    )


# --- triplet -------------------------------------------------------------------------------------------------


def test_batch_hard_mining_picks_farthest_positive_and_closest_negative() -> None:
    # anchor 0: positives {0: 0, 1: 0.5} -> 1;   negatives {2: 1.0, 3: 0.3} -> 3
    # anchor 1: positives {0: 0.5, 1: 0} -> 0;   negatives {2: 0.9, 3: 0.8} -> 3
    # anchor 2: positives {2: 0, 3: 0.6} -> 3;   negatives {0: 1.0, 1: 0.9} -> 1
    # anchor 3: positives {2: 0.6, 3: 0} -> 2;   negatives {0: 0.3, 1: 0.8} -> 0
    mined = batch_hard_triplets(DIST, DIST_TARGETS)
    assert mined.positive_index.tolist() == [1, 0, 3, 2]
    assert mined.negative_index.tolist() == [3, 3, 1, 0]
    assert mined.has_negative.all()


def test_triplet_margin_and_soft_margin_values() -> None:
    # (d_ap, d_an) per anchor: (0.5, 0.3), (0.5, 0.8), (0.6, 0.9), (0.6, 0.3); gaps d_ap - d_an: 0.2, -0.3, -0.3, 0.3
    # margin 0.2: relu(0.4) + relu(-0.1) + relu(-0.1) + relu(0.5) = 0.9, mean 0.225
    hinge = distance_triplet_loss(DIST, DIST_TARGETS, margin=0.2)
    assert hinge.item() == pytest.approx(0.225)
    # soft margin: ln(1 + e^0.2) + 2 ln(1 + e^-0.3) + ln(1 + e^0.3) = 0.798139 + 2 * 0.554355 + 0.854355
    #            = 2.761204, mean 0.690301
    soft = distance_triplet_loss(DIST, DIST_TARGETS, soft_margin=True)
    assert soft.item() == pytest.approx(
        (LN(1 + math.exp(0.2)) + 2 * LN(1 + math.exp(-0.3)) + LN(1 + math.exp(0.3))) / 4
    )
    assert soft.item() == pytest.approx(0.690301, abs=1e-6)
    # FastReID's formulation: margin_ranking_loss(d_an, d_ap, 1, margin) and soft_margin_loss(d_an - d_ap, 1).
    dist_ap = torch.tensor([0.5, 0.5, 0.6, 0.6], dtype=torch.float64)
    dist_an = torch.tensor([0.3, 0.8, 0.9, 0.3], dtype=torch.float64)
    ones = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(hinge, F.margin_ranking_loss(dist_an, dist_ap, ones, margin=0.2))
    torch.testing.assert_close(soft, F.soft_margin_loss(dist_an - dist_ap, ones))


def test_triplet_without_negative_or_with_a_singleton() -> None:
    # One identity: no anchor has a negative, so no loss (FastReID's d_an = 1e9 gives the same 0).
    assert distance_triplet_loss(DIST, torch.zeros(4, dtype=torch.long)).item() == 0.0
    # Identities 0 1 1 1: anchor 0 is its own (only) positive at distance 0 and its closest negative is 3 (0.3):
    # relu(0 - 0.3 + 0.3) = 0. anchor 1: pos 2 (0.9), neg 0 (0.5): 0.7; anchor 2: pos 1 (0.9), neg 0 (1.0): 0.2;
    # anchor 3: pos 1 (0.8), neg 0 (0.3): 0.8. mean (0 + 0.7 + 0.2 + 0.8) / 4 = 0.425
    targets = torch.tensor([0, 1, 1, 1])
    assert batch_hard_triplets(DIST, targets).positive_index.tolist() == [0, 2, 1, 1]
    assert distance_triplet_loss(DIST, targets, margin=0.3).item() == pytest.approx(0.425)


def test_mined_pairs_apply_to_another_distance_matrix() -> None:
    # The pairs mined on DIST, read on 2 * DIST: hinge gaps double, margin 0.2: relu(0.6) + 0 + 0 + relu(0.8)
    mined = batch_hard_triplets(DIST, DIST_TARGETS)
    assert mined_triplet_loss(2 * DIST, mined, margin=0.2).item() == pytest.approx((0.6 + 0.8) / 4)


def test_weighted_mining_matches_a_naive_loop() -> None:
    margin = 0.3
    expected = 0.0
    for i in range(4):
        same = [j for j in range(4) if DIST_TARGETS[j] == DIST_TARGETS[i]]
        other = [j for j in range(4) if DIST_TARGETS[j] != DIST_TARGETS[i]]
        w_p = [math.exp(DIST[i, j].item()) for j in same]
        w_n = [math.exp(-DIST[i, j].item()) for j in other]
        d_ap = sum(w * DIST[i, j].item() for w, j in zip(w_p, same)) / sum(w_p)
        d_an = sum(w * DIST[i, j].item() for w, j in zip(w_n, other)) / sum(w_n)
        expected += max(d_ap - d_an + margin, 0.0) / 4
    loss = distance_triplet_loss(DIST, DIST_TARGETS, margin=margin, hard_mining=False)
    # FastReID adds 1e-6 to the softmax's denominator.
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_normalize_mines_on_fastreids_cosine_distance() -> None:
    # Unit vectors u0 = (1, 0), u1 = (0, 1), u2 = (1, 1) / sqrt 2, u3 = (-1, 0) (features scaled arbitrarily);
    # d = 2 - 2 cos: d01 = 2, d02 = 2 - sqrt 2, d03 = 4, d12 = 2 - sqrt 2, d13 = 2, d23 = 2 + sqrt 2.
    # identities 0 0 1 1, margin 0.3:
    # anchor 0: d_ap = 2,          d_an = min(2 - r2, 4) = 2 - r2       -> r2 + 0.3
    # anchor 1: d_ap = 2,          d_an = min(2 - r2, 2) = 2 - r2       -> r2 + 0.3
    # anchor 2: d_ap = 2 + r2,     d_an = min(2 - r2, 2 - r2)           -> 2 r2 + 0.3
    # anchor 3: d_ap = 2 + r2,     d_an = min(4, 2) = 2                 -> r2 + 0.3
    # mean = (5 r2 + 1.2) / 4 = 2.067767
    features = torch.tensor([[2.0, 0.0], [0.0, 0.5], [3.0, 3.0], [-1.0, 0.0]], dtype=torch.float64)
    r2 = math.sqrt(2)
    expected_dist = torch.tensor(
        [[0, 2, 2 - r2, 4], [2, 0, 2 - r2, 2], [2 - r2, 2 - r2, 0, 2 + r2], [4, 2, 2 + r2, 0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(feature_distances(features, normalize=True), expected_dist)
    torch.testing.assert_close(cosine_dist(features, features), expected_dist)
    loss = triplet_loss(features, DIST_TARGETS, margin=0.3, normalize=True)
    assert loss.item() == pytest.approx((5 * r2 + 1.2) / 4)
    assert loss.item() == pytest.approx(2.067767, abs=1e-6)
    # Without normalize the scale matters: Euclidean distances of the raw features.
    torch.testing.assert_close(
        feature_distances(features), torch.cdist(features, features), atol=1e-6, rtol=0
    )
    assert triplet_loss(features, DIST_TARGETS, margin=0.3).item() != pytest.approx(loss.item())


def test_euclidean_dist_of_identical_vectors_is_finite_with_finite_gradient() -> None:
    x = torch.ones(2, 3, requires_grad=True)
    dist = euclidean_dist(x, x)
    assert torch.allclose(dist, torch.full((2, 2), 1e-6))
    dist.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "options",
    [{"margin": 0.3}, {"soft_margin": True}, {"normalize": True, "margin": 0.5}, {"hard_mining": False}],
)
def test_triplet_gradcheck(options: dict[str, float | bool]) -> None:
    features, targets = pk_features()
    features.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: triplet_loss(x, targets, **options), (features,))  # type: ignore[arg-type]


# --- circle --------------------------------------------------------------------------------------------------


def naive_circle(
    features: Tensor, targets: Tensor, margin: float, gamma: float, weights_from: Tensor
) -> Tensor:
    """Per anchor ``log(1 + sum_n exp(gamma a_n (s_n - m)) * sum_p exp(-gamma a_p (s_p - (1 - m))))``, batch mean.

    The self-paced weights ``a_p = relu(1 + m - s_p)``, ``a_n = relu(s_n + m)`` come from ``weights_from``'s
    similarities: constants, as the loss's ``detach()`` makes them.
    """
    unit = features / features.norm(dim=1, keepdim=True)
    fixed = weights_from / weights_from.norm(dim=1, keepdim=True)
    n = len(targets)
    total = features.new_zeros(())
    for i in range(n):
        sum_p = features.new_zeros(())
        sum_n = features.new_zeros(())
        for j in range(n):
            s = unit[i] @ unit[j]
            s_fixed = (fixed[i] @ fixed[j]).item()
            if j != i and targets[j] == targets[i]:
                sum_p = sum_p + torch.exp(-gamma * max(1 + margin - s_fixed, 0.0) * (s - (1 - margin)))
            elif targets[j] != targets[i]:
                sum_n = sum_n + torch.exp(gamma * max(s_fixed + margin, 0.0) * (s - margin))
        total = total + torch.log(1 + sum_p * sum_n)
    return total / n


def test_circle_loss_matches_the_naive_loop() -> None:
    features, targets = pk_features(p=3, k=2, dim=4, seed=2)
    for margin, gamma in [(0.25, 16.0), (0.4, 2.0), (0.25, 128.0)]:
        expected = naive_circle(features, targets, margin, gamma, features)
        loss = pairwise_circle_loss(features, targets, margin=margin, gamma=gamma)
        torch.testing.assert_close(loss, expected)


def test_circle_loss_singleton_identity_contributes_zero() -> None:
    # Identities 0 1 1: anchor 0 has no positive pair, so log(1 + 0 * sum_n) = 0, but it counts in the mean.
    features, _ = pk_features(p=1, k=3, dim=4, seed=3)
    targets = torch.tensor([0, 1, 1])
    loss = pairwise_circle_loss(features, targets, margin=0.25, gamma=8.0)
    torch.testing.assert_close(loss, naive_circle(features, targets, 0.25, 8.0, features))
    only_pairs = pairwise_circle_loss(features[1:], targets[1:], margin=0.25, gamma=8.0)  # no negatives: 0
    assert only_pairs.item() == pytest.approx(0.0, abs=1e-12)


def numerical_gradient(function: Callable[[Tensor], Tensor], x: Tensor, step: float = 1e-6) -> Tensor:
    gradient = torch.zeros_like(x)
    for index in range(x.numel()):
        offset = torch.zeros_like(x).view(-1)
        offset[index] = step
        offset = offset.view_as(x)
        gradient.view(-1)[index] = (function(x + offset) - function(x - offset)) / (2 * step)
    return gradient


def test_circle_gradient() -> None:
    # torch.autograd.gradcheck on the loss itself would fail by design: the weights a_p, a_n are detached
    # (FastReID's alpha_p = clamp_min(-s_p.detach() + 1 + m)), so the analytic gradient is that of the loss with
    # the weights held at their current values. That function is checked by finite differences here.
    features, targets = pk_features(p=3, k=2, dim=3, seed=4)
    x = features.clone().requires_grad_()
    pairwise_circle_loss(x, targets, margin=0.25, gamma=4.0).backward()
    fixed_weights = features.clone()
    expected = numerical_gradient(lambda y: naive_circle(y, targets, 0.25, 4.0, fixed_weights), features)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected, atol=1e-7, rtol=1e-5)
    # And gradcheck proper on the reference with its weights fixed, so the reference's gradient is the true one.
    assert torch.autograd.gradcheck(
        lambda y: naive_circle(y, targets, 0.25, 4.0, fixed_weights), (features.clone().requires_grad_(),)
    )


def test_metric_losses_keep_float32_under_autocast() -> None:
    features, targets = pk_features()
    features = features.float()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        circle = pairwise_circle_loss(features, targets)
        dist = feature_distances(features)
    assert circle.dtype == torch.float32 and dist.dtype == torch.float32
    torch.testing.assert_close(circle, pairwise_circle_loss(features, targets))


# --- mutual --------------------------------------------------------------------------------------------------


def test_kl_mutual_loss_values_and_no_gradient_into_the_peer() -> None:
    # sample 0: p = (0.5, 0.25, 0.25), peer q = (0.25, 0.5, 0.25)
    #   KL(q || p) = 0.25 ln(0.25/0.5) + 0.5 ln(0.5/0.25) + 0.25 ln 1 = -0.25 ln 2 + 0.5 ln 2 = 0.25 ln 2 = 0.173287
    # sample 1: p = q = (0.2, 0.6, 0.2): KL 0.     batch mean = 0.125 ln 2 = 0.086643
    logits = LOGITS.clone().requires_grad_()
    peer = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.6, 0.2]], dtype=torch.float64).log().requires_grad_()
    loss = kl_mutual_loss(logits, peer)
    assert loss.item() == pytest.approx(0.125 * LN(2))
    assert loss.item() == pytest.approx(0.086643, abs=1e-6)
    loss.backward()
    assert peer.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # T = 2 on sample 0: softmax(ln p / 2) = sqrt(p) / sum sqrt(p) = (r2, 1, 1) / (2 + r2), peer (1, r2, 1) / (2 + r2)
    #   KL = [1 * ln(1 / r2) + r2 * ln(r2 / 1)] / (2 + r2) = (r2 - 1) ln(r2) / (2 + r2) = 0.042046; times T^2: 0.168186
    r2 = math.sqrt(2)
    tempered = kl_mutual_loss(LOGITS[:1], peer[:1].detach(), temperature=2.0)
    assert tempered.item() == pytest.approx(4 * (r2 - 1) * LN(r2) / (2 + r2))
    assert tempered.item() == pytest.approx(0.168186, abs=1e-6)


def test_metric_mutual_loss_value_and_no_gradient_into_the_peer() -> None:
    # ((0 - 0)^2 + (1 - 3)^2 + (1 - 3)^2 + (0 - 0)^2) / 4 = 8 / 4 = 2
    dist = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    peer = torch.tensor([[0.0, 3.0], [3.0, 0.0]], requires_grad=True)
    loss = metric_mutual_loss(dist, peer)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert peer.grad is None
    # d/d dist of mean((dist - peer)^2) = 2 (dist - peer) / 4: -1 off the diagonal.
    assert dist.grad is not None
    torch.testing.assert_close(dist.grad, torch.tensor([[0.0, -1.0], [-1.0, 0.0]]))


# --- the criterion -------------------------------------------------------------------------------------------


def training_outputs(seed: int = 5) -> tuple[dict[str, Tensor], Tensor]:
    features, targets = pk_features(p=3, k=2, dim=6, seed=seed)
    logits = torch.randn(len(targets), 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {"global_feat": features, "bn_feat": features, "logits": logits}, targets


def test_criterion_default_is_ce_plus_triplet_and_parts_add_up() -> None:
    outputs, targets = training_outputs()
    outputs["logits"].requires_grad_()
    total, parts = ReIDCriterion(parse_loss_config(None))(outputs, targets)
    assert set(parts) == {"ce", "triplet"}
    torch.testing.assert_close(total.detach(), parts["ce"] + parts["triplet"])
    torch.testing.assert_close(
        parts["ce"], cross_entropy_label_smoothing(outputs["logits"], targets, 0.1).detach()
    )
    torch.testing.assert_close(parts["triplet"], triplet_loss(outputs["global_feat"], targets, margin=0.3))
    assert total.requires_grad and not any(part.requires_grad for part in parts.values())


def test_criterion_weights_and_disabled_losses() -> None:
    outputs, targets = training_outputs()
    cfg = parse_loss_config(
        {
            "ce": {"weight": 0.5, "epsilon": "adaptive", "alpha": 0.3},
            "triplet": {"weight": 0},
            "circle": {"weight": 2.0, "margin": 0.3, "gamma": 32},
        }
    )
    total, parts = ReIDCriterion(cfg)(outputs, targets)
    assert set(parts) == {"ce", "circle"}
    ce = adaptive_cross_entropy_label_smoothing(outputs["logits"], targets, 0.3)
    circle = pairwise_circle_loss(outputs["global_feat"], targets, margin=0.3, gamma=32)
    torch.testing.assert_close(parts["ce"], 0.5 * ce)
    torch.testing.assert_close(parts["circle"], 2.0 * circle)
    torch.testing.assert_close(total, 0.5 * ce + 2.0 * circle)


def test_criterion_names_the_loss_whose_output_is_missing() -> None:
    outputs, targets = training_outputs()
    del outputs["logits"]
    with pytest.raises(ConfigError, match=r"losses\.ce\.weight.*'logits'"):
        ReIDCriterion(LossConfig())(outputs, targets)
    cfg = parse_loss_config({"ce": {"weight": 0}, "triplet": {"weight": 0}, "local_triplet": {"weight": 1}})
    with pytest.raises(ConfigError, match=r"losses\.local_triplet\.weight.*'global_feat'"):
        ReIDCriterion(cfg)({"logits": torch.zeros(2, 3)}, torch.tensor([0, 1]))


def test_criterion_local_triplet() -> None:
    aligned = pytest.importorskip("edgereid.modeling.aligned")
    outputs, targets = training_outputs()
    generator = torch.Generator().manual_seed(6)
    outputs["local_feat"] = torch.randn(len(targets), 4, 3, generator=generator, dtype=torch.float64)
    cfg = parse_loss_config({"local_triplet": {"weight": 0.7, "margin": 0.2}})
    total, parts = ReIDCriterion(cfg)(outputs, targets)
    assert set(parts) == {"ce", "triplet", "local_triplet"}
    local_dist = aligned.local_distance_matrix(outputs["local_feat"], outputs["local_feat"])
    mined = batch_hard_triplets(feature_distances(outputs["global_feat"]), targets)
    torch.testing.assert_close(
        parts["local_triplet"], 0.7 * mined_triplet_loss(local_dist, mined, margin=0.2)
    )
    torch.testing.assert_close(total, sum(parts.values()))


# --- configuration -------------------------------------------------------------------------------------------


def test_defaults_are_bot() -> None:
    cfg = parse_loss_config({})
    assert cfg == parse_loss_config(None) == LossConfig()
    assert (cfg.ce.weight, cfg.ce.epsilon, cfg.triplet.weight, cfg.triplet.margin) == (1.0, 0.1, 1.0, 0.3)
    assert cfg.circle.weight == 0 and cfg.local_triplet.weight == 0


def test_unknown_key_names_its_path_and_the_known_keys() -> None:
    with pytest.raises(ConfigError) as error:
        parse_loss_config({"triplet": {"margn": 0.3}})
    assert (
        "losses.triplet.margn: unknown key; expected one of weight, margin, soft_margin, hard_mining, normalize"
        in str(error.value)
    )
    with pytest.raises(
        ConfigError, match=r"model\.losses\.center: unknown key; expected one of ce, triplet, circle"
    ):
        parse_loss_config({"center": {"weight": 1}}, key="model.losses")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ce": {"weight": -1}}, r"losses\.ce\.weight: .*greater than or equal to 0.*-1"),
        ({"ce": {"weight": 0}, "triplet": {"weight": 0}}, r"every loss has weight 0"),
        (
            {"ce": {"alpha": 0.3}},
            r"losses\.ce: alpha applies only with epsilon: adaptive, but epsilon is 0\.1",
        ),
        (
            {"ce": {"epsilon": 1.5}},
            r"losses\.ce\.epsilon: expected a number in \[0, 1\] or 'adaptive', got 1\.5",
        ),
        ({"ce": {"epsilon": "auto"}}, r"losses\.ce\.epsilon: .*'auto'"),
        ({"triplet": {"soft_margin": True, "margin": 0.5}}, r"losses\.triplet: margin has no effect"),
        ({"circle": {"weight": 1, "gamma": 0}}, r"losses\.circle\.gamma"),
    ],
)
def test_invalid_configs_are_rejected(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_loss_config(data)


def test_adaptive_epsilon_takes_alpha() -> None:
    cfg = parse_loss_config({"ce": {"epsilon": "adaptive", "alpha": 0.3}})
    assert cfg.ce.epsilon == "adaptive" and cfg.ce.alpha == 0.3
    assert parse_loss_config({"ce": {"epsilon": 0}}).ce.epsilon == 0
