"""Mutual learning losses (AlignedReID): each of two networks trained together learns from the other's outputs.

The peer's outputs are targets, never a path for gradients: each network's step moves only itself, and the peer
gets its own loss with the roles swapped.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kl_mutual_loss(logits: Tensor, peer_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(peer_logits / T) || softmax(logits / T))``, averaged over the batch.

    The ``T^2`` keeps the gradient's scale independent of the temperature (Hinton et al. 2015), so the loss weight
    need not change with ``temperature``.
    """
    log_probs = F.log_softmax(logits / temperature, dim=1)
    peer_log_probs = F.log_softmax(peer_logits.detach() / temperature, dim=1)
    divergence = F.kl_div(log_probs, peer_log_probs, reduction="batchmean", log_target=True)
    return divergence * temperature**2


def distillation_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, symmetric: bool = False
) -> Tensor:
    """``kl_mutual_loss`` from a teacher: ``T^2 * KL(teacher || student)``; ``symmetric`` averages it with the
    reverse ``T^2 * KL(student || teacher)``. Only the student receives gradients, in both directions."""
    forward = kl_mutual_loss(student_logits, teacher_logits, temperature)
    if not symmetric:
        return forward
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    reverse = F.kl_div(teacher_log_probs, student_log_probs, reduction="batchmean", log_target=True)
    return 0.5 * (forward + reverse * temperature**2)


def metric_mutual_loss(dist: Tensor, peer_dist: Tensor) -> Tensor:
    """Mean squared difference between a batch's (N, N) distance matrix and the peer's for the same batch."""
    return (dist - peer_dist.detach()).pow(2).mean()
