"""AlignedReID's local branch and its shortest-path stripe distance (Zhang et al., 2017; as in huanghoujing's
AlignedReID-Re-Production-Pytorch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AlignedLocalBranch(nn.Module):
    """B×C×h×w map → B×h×``channels`` local features, one per horizontal stripe, each L2-normalised.

    Pooling over the width only keeps one feature per row of the map; the 1×1 conv + BN + ReLU reduces them to a
    small width, and the normalisation keeps stripe distances in [0, 2] so the tanh map below stays informative.
    """

    def __init__(self, in_channels: int, channels: int = 128) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.channels = channels

    def forward(self, feature_map: Tensor) -> Tensor:
        stripes = feature_map.mean(dim=3, keepdim=True)  # B, C, h, 1
        local = self.relu(self.bn(self.conv(stripes))).squeeze(3).transpose(1, 2)  # B, h, c
        return F.normalize(local, dim=-1)


def _stripe_distances(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distance between every stripe of every x and every stripe of every y: B1×B2×h×h."""
    xx = (x * x).sum(-1)  # B1, h
    yy = (y * y).sum(-1)  # B2, h
    cross = torch.einsum("aic,bjc->abij", x, y)
    squared = xx[:, None, :, None] + yy[None, :, None, :] - 2.0 * cross
    # Clamped before the root as AlignedReID does: sqrt's gradient is infinite at 0.
    return squared.clamp(min=1e-12).sqrt()


def local_distance_matrix(x: Tensor, y: Tensor) -> Tensor:
    """AlignedReID's local distance between every x (B1×h×C) and y (B2×h×C): B1×B2.

    Stripe distances d map to (e^d − 1)/(e^d + 1) = tanh(d/2) ∈ [0, 1); the distance of a pair is the cheapest
    path from stripe pair (0, 0) to (h−1, h−1) moving one stripe down in x or in y at a time, which aligns body
    parts between misaligned crops. The dynamic programme runs over the 2h−1 anti-diagonals, each step one tensor
    operation for all pairs at once.
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"expected x (B1, h, C) and y (B2, h, C) with the same h and C, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    h = x.shape[1]
    cost = torch.tanh(_stripe_distances(x, y) / 2.0)  # B1, B2, h, h
    rows = torch.arange(h, device=x.device)
    # Every path costs less than 2h − 1 (each step < 1), so 2h stands for "unreachable" without inf arithmetic.
    unreachable = torch.full((), 2.0 * h, dtype=cost.dtype, device=cost.device)
    # best[..., i]: the cheapest path to cell (i, k − i) of the current anti-diagonal k.
    best = torch.where(rows == 0, cost[..., 0, 0, None], unreachable)
    for k in range(1, 2 * h - 1):
        cols = k - rows
        valid = (cols >= 0) & (cols < h)
        cell = cost[..., rows, cols.clamp(0, h - 1)]  # B1, B2, h
        from_left = best  # (i, k−1−i) → (i, k−i)
        from_above = torch.cat([unreachable.expand_as(best[..., :1]), best[..., :-1]], dim=-1)  # (i−1, k−i)
        best = torch.where(valid, cell + torch.minimum(from_left, from_above), unreachable)
    return best[..., h - 1]
