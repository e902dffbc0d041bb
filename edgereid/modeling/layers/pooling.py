"""Global pooling of a B×C×h×w map to B×C: average, max, their sum, clipped average, GeM (fixed or learnable p)
and spatial attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgereid.errors import ConfigError


class GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class GlobalMaxPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=(2, 3))


class GlobalAvgMaxPool(nn.Module):
    """The sum (not the mean) of average and max pooling, as FastReID's ``AdaptiveAvgMaxPool``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


class ClipGlobalAvgPool(nn.Module):
    """Average pooling clamped to [0, 1], as FastReID's ``ClipGlobalAvgPool``: every feature saturates at 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)).clamp(min=0.0, max=1.0)


class GeMPool(nn.Module):
    """Generalised mean ``(mean(x^p))^(1/p)`` (Radenović et al.); p=1 is average, p→∞ tends to max.

    As FastReID's ``GeneralizedMeanPooling``, inputs are clamped to ``eps`` first: post-ReLU maps hold zeros, and
    x^p's gradient (and x^(1/p) at 0) is not finite there.
    """

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        initial = torch.full((1,), float(p))
        self.p: Tensor
        if learnable:
            self.p = nn.Parameter(initial)
        else:
            self.register_buffer("p", initial)

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3g}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"


class AttentionPool(nn.Module):
    """A 1×1 conv scores every position; the softmax of the scores over h×w weights the sum of the features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        # Zero weights: uniform attention at the start, i.e. average pooling until the scores learn something.
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)  # type: ignore[arg-type]  # created with bias=True

    def forward(self, x: Tensor) -> Tensor:
        weights = F.softmax(self.score(x).flatten(2), dim=-1)  # B, 1, hw
        return (x.flatten(2) * weights).sum(dim=-1)


def build_pooling(kind: str, channels: int, gem_p: float = 3.0) -> nn.Module:
    if kind == "avg":
        return GlobalAvgPool()
    if kind == "max":
        return GlobalMaxPool()
    if kind == "avgmax":
        return GlobalAvgMaxPool()
    if kind == "clipavg":
        return ClipGlobalAvgPool()
    if kind in ("gem", "gem_learnable"):
        return GeMPool(gem_p, learnable=kind == "gem_learnable")
    if kind == "attention":
        return AttentionPool(channels)
    raise ConfigError(f"model.pooling: unknown pooling '{kind}'; expected avg, max, avgmax, clipavg, gem, "
                      "gem_learnable or attention")
