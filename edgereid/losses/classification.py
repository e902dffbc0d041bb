"""Identity classification losses: cross-entropy with label smoothing, fixed (BoT) or adaptive (FastReID).

Both use FastReID's smoothed target (``epsilon`` spread over the K - 1 wrong classes, not over all K as in BoT
and torch), so that FastReID's ``CE.EPSILON`` values carry over.

Margin-based classification (ArcFace, CosFace, the Circle classifier) has no loss of its own here: the classifier
layer in `edgereid.modeling` applies the margin and the scale to the logits of the training batch, and the loss
is this cross-entropy over those logits. Passing them as ``logits`` is all it takes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "none"]


def cross_entropy_label_smoothing(
    logits: Tensor,
    targets: Tensor,
    epsilon: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy against a label-smoothed target: ``1 - epsilon`` on the true class, ``epsilon / (K - 1)``
    on each of the K - 1 others (FastReID's ``cross_entropy_loss``).

    This is not torch's ``F.cross_entropy(label_smoothing=epsilon)``, which puts ``1 - epsilon + epsilon / K`` on
    the true class and ``epsilon / K`` on the others: the same ``epsilon`` smooths a little more here.
    ``logits`` is (N, K), ``targets`` (N,) class indices. With ``epsilon=0`` this is ``F.cross_entropy``.
    Samples whose target is ``ignore_index`` contribute nothing: ``reduction="mean"`` averages over the other
    samples (0 when every sample is ignored), ``"none"`` returns the (N,) per-sample losses with 0 where ignored.
    """
    log_probs, kept_targets, kept = _log_probs_and_kept_targets(logits, targets, ignore_index)
    return _smoothed_nll(log_probs, kept_targets, kept, epsilon, reduction)


def adaptive_cross_entropy_label_smoothing(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.2,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """Label smoothing with a per-sample ``epsilon = alpha * p(target)`` (FastReID's adaptive smoothing).

    The more confident the model already is about a sample, the more its target is smoothed. As in FastReID
    (``CE.EPSILON < 0``), the smoothing strength is a target, not a path for gradients: ``p(target)`` is detached.
    The smoothed target is that of `cross_entropy_label_smoothing` (``epsilon`` spread over the K - 1 wrong
    classes), as in FastReID, where both variants share one target.
    """
    log_probs, kept_targets, kept = _log_probs_and_kept_targets(logits, targets, ignore_index)
    target_probability = log_probs.detach().gather(1, kept_targets.unsqueeze(1)).squeeze(1).exp()
    return _smoothed_nll(log_probs, kept_targets, kept, alpha * target_probability, reduction)


def _log_probs_and_kept_targets(
    logits: Tensor, targets: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    kept = targets != ignore_index
    # Ignored samples get class 0 so that indexing stays valid; their loss is zeroed afterwards.
    kept_targets = torch.where(kept, targets, torch.zeros_like(targets))
    return F.log_softmax(logits, dim=1), kept_targets, kept


def _smoothed_nll(
    log_probs: Tensor, targets: Tensor, kept: Tensor, epsilon: float | Tensor, reduction: Reduction
) -> Tensor:
    # -sum_k q_k log p_k with q_y = 1 - eps and q_k = eps / (K - 1) for k != y, without materialising the (N, K)
    # target matrix. With K = 1 there is no other class, and the loss is 0 whatever eps (log p_y = 0).
    target_log_prob = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    other_log_probs = log_probs.sum(dim=1) - target_log_prob
    other_classes = max(log_probs.size(1) - 1, 1)
    per_sample = -(1.0 - epsilon) * target_log_prob - epsilon / other_classes * other_log_probs
    per_sample = torch.where(kept, per_sample, torch.zeros_like(per_sample))
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        # FastReID divides by the number of non-zero per-sample losses, which with any smoothing (or any logits
        # short of a one-hot probability) is the batch size; the samples kept are the intended count.
        return per_sample.sum() / kept.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
