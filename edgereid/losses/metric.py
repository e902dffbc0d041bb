"""Metric losses on a batch of embeddings: distances, triplet loss with batch-hard or weighted mining, Circle loss.

Definitions follow FastReID. The triplet loss also takes a precomputed (N, N) distance matrix, and hard mining is
split into `batch_hard_triplets` (which pairs) and `mined_triplet_loss` (the loss on any distance matrix at those
pairs): AlignedReID mines on the global distances and applies the very same pairs to the local distances.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Squared distances are clamped here before the square root: rounding makes the squared distance of identical
# vectors 0 or slightly negative, where sqrt is NaN or has an infinite gradient.
_MIN_SQUARED_DISTANCE = 1e-12
# Stands in for "no pair" in a log-sum-exp: exp() of it is 0, yet unlike -inf it keeps the gradient finite.
_MASKED_LOGIT = -1e9


def euclidean_dist(x: Tensor, y: Tensor) -> Tensor:
    """(M, N) Euclidean distances between the rows of ``x`` (M, D) and ``y`` (N, D); never below 1e-6."""
    squared = x.pow(2).sum(dim=1, keepdim=True) + y.pow(2).sum(dim=1).unsqueeze(0)
    squared = torch.addmm(squared, x, y.t(), beta=1.0, alpha=-2.0)
    return squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()


def cosine_dist(x: Tensor, y: Tensor) -> Tensor:
    """(M, N) cosine distances ``2 - 2 cos`` (FastReID's definition), in [0, 4].

    This is the squared Euclidean distance between the L2-normalised rows, so triplet margins tuned in FastReID
    with ``NORM_FEAT`` carry over.
    """
    return 2.0 - 2.0 * F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()


def feature_distances(features: Tensor, normalize: bool = False) -> Tensor:
    """The (N, N) distance matrix a triplet loss mines on: Euclidean, or `cosine_dist` when ``normalize``.

    As FastReID's ``triplet_loss`` (``cosine_dist`` with ``NORM_FEAT``, else ``euclidean_dist``). Computed in at
    least float32 whatever autocast chose: ``|x|^2 + |y|^2 - 2 x.y`` loses every digit to cancellation in float16.
    """
    with _full_precision(features) as full:
        return cosine_dist(full, full) if normalize else euclidean_dist(full, full)


class MinedTriplets(NamedTuple):
    """For each anchor i of a batch: its hardest positive and hardest negative, and whether it has a negative."""

    positive_index: Tensor
    negative_index: Tensor
    has_negative: Tensor


def batch_hard_triplets(dist_mat: Tensor, targets: Tensor) -> MinedTriplets:
    """Batch-hard mining (Hermans et al. 2017): the farthest same-identity and the closest other-identity sample.

    As in FastReID the anchor counts as its own positive, so an identity seen once in the batch still has one.
    An anchor without any negative (a batch of one identity) gets ``has_negative`` False and no loss.
    """
    is_positive = targets.unsqueeze(1) == targets.unsqueeze(0)
    distances = dist_mat.detach()
    positive_index = torch.where(is_positive, distances, -torch.inf).argmax(dim=1)
    negative_index = torch.where(is_positive, torch.inf, distances).argmin(dim=1)
    return MinedTriplets(positive_index, negative_index, (~is_positive).any(dim=1))


def mined_triplet_loss(
    dist_mat: Tensor, triplets: MinedTriplets, *, margin: float = 0.3, soft_margin: bool = False
) -> Tensor:
    """Triplet loss on ``dist_mat`` at the pairs ``triplets`` names, wherever those were mined."""
    dist_ap = dist_mat.gather(1, triplets.positive_index.unsqueeze(1)).squeeze(1)
    dist_an = dist_mat.gather(1, triplets.negative_index.unsqueeze(1)).squeeze(1)
    return _ranking_loss(dist_ap, dist_an, triplets.has_negative, margin, soft_margin)


def distance_triplet_loss(
    dist_mat: Tensor,
    targets: Tensor,
    *,
    margin: float = 0.3,
    soft_margin: bool = False,
    hard_mining: bool = True,
) -> Tensor:
    """Triplet loss on a precomputed (N, N) distance matrix of a batch with identities ``targets`` (N,).

    Per anchor ``relu(d_ap - d_an + margin)`` (FastReID's ``F.margin_ranking_loss(dist_an, dist_ap, 1, margin)``),
    or ``softplus(d_ap - d_an)`` with ``soft_margin`` (``F.soft_margin_loss(dist_an - dist_ap, 1)``, which FastReID
    uses when its margin is 0; here ``margin=0`` without ``soft_margin`` is the hinge at 0), averaged over the
    batch, anchors without a negative counting as 0. ``hard_mining`` picks the batch-hard pair; without it,
    FastReID's weighted mining averages the positives with softmax weights of their distances and the negatives
    with softmax weights of their negated distances.
    """
    if hard_mining:
        return mined_triplet_loss(
            dist_mat, batch_hard_triplets(dist_mat, targets), margin=margin, soft_margin=soft_margin
        )
    is_positive = targets.unsqueeze(1) == targets.unsqueeze(0)
    dist_ap = (_masked_softmax(dist_mat, is_positive) * dist_mat).sum(dim=1)
    dist_an = (_masked_softmax(-dist_mat, ~is_positive) * dist_mat).sum(dim=1)
    return _ranking_loss(dist_ap, dist_an, (~is_positive).any(dim=1), margin, soft_margin)


def triplet_loss(
    features: Tensor,
    targets: Tensor,
    *,
    margin: float = 0.3,
    soft_margin: bool = False,
    hard_mining: bool = True,
    normalize: bool = False,
) -> Tensor:
    """Triplet loss on embeddings ``features`` (N, D): `distance_triplet_loss` on `feature_distances`."""
    return distance_triplet_loss(
        feature_distances(features, normalize),
        targets,
        margin=margin,
        soft_margin=soft_margin,
        hard_mining=hard_mining,
    )


def _ranking_loss(
    dist_ap: Tensor, dist_an: Tensor, has_negative: Tensor, margin: float, soft_margin: bool
) -> Tensor:
    gap = dist_ap - dist_an
    # softplus never overflows where log(1 + exp(gap)) would, so FastReID's fallback when its soft-margin loss is
    # inf (the hinge with margin 0.3 instead) has nothing to catch here.
    per_anchor = F.softplus(gap) if soft_margin else F.relu(gap + margin)
    # An anchor without a negative: FastReID's hard mining sets its d_an to 1e9, for a loss of 0 in the mean.
    return torch.where(has_negative, per_anchor, torch.zeros_like(per_anchor)).mean()


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    # Masking before exp() keeps both exp() and its gradient finite. A row with an empty mask gets all-zero
    # weights; the 1e-6 (FastReID's) keeps its division finite.
    row_max = torch.where(mask, scores, torch.finfo(scores.dtype).min).amax(dim=1, keepdim=True).detach()
    weights = torch.where(mask, scores - row_max, -torch.inf).exp()
    return weights / (weights.sum(dim=1, keepdim=True) + 1e-6)


def pairwise_circle_loss(
    features: Tensor, targets: Tensor, *, margin: float = 0.25, gamma: float = 128.0
) -> Tensor:
    """Pairwise Circle loss (Sun et al. 2020) on the cosine similarities of ``features`` (N, D), as in FastReID.

    Every other sample of the anchor's identity is a positive pair, every sample of another identity a negative
    pair; their self-paced weights ``alpha_p = relu(1 + m - s_p)`` and ``alpha_n = relu(s_n + m)`` are constants to
    the gradient. An anchor with no positive or no negative pair contributes 0 to the batch mean.
    """
    # At least float32 whatever autocast chose: gamma * similarity and the masked logits overflow float16.
    with _full_precision(features) as full:
        normalized = F.normalize(full, dim=1)
        similarity = normalized @ normalized.t()
        same_identity = targets.unsqueeze(1) == targets.unsqueeze(0)
        is_positive = same_identity & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)
        is_negative = ~same_identity

        alpha_p = (1.0 + margin - similarity.detach()).clamp(min=0.0)
        alpha_n = (similarity.detach() + margin).clamp(min=0.0)
        logit_p = torch.where(is_positive, -gamma * alpha_p * (similarity - (1.0 - margin)), _MASKED_LOGIT)
        logit_n = torch.where(is_negative, gamma * alpha_n * (similarity - margin), _MASKED_LOGIT)
        return F.softplus(torch.logsumexp(logit_p, dim=1) + torch.logsumexp(logit_n, dim=1)).mean()


@contextmanager
def _full_precision(features: Tensor) -> Iterator[Tensor]:
    # Autocast off, and float16/bfloat16 features as float32; float32 and float64 ones stay as they are.
    with torch.autocast(device_type=features.device.type, enabled=False):
        yield features.to(torch.promote_types(features.dtype, torch.float32))
