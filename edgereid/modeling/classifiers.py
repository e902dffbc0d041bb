"""Identity classifiers: a plain linear layer, and the margin softmaxes on L2-normalised features and weights
(ArcFace, CosFace, Circle), as FastReID's ``layers/any_softmax.py``.

The margin classifiers need the targets in training (the margin goes on the target's logit) and return the
scaled, margined logits that the cross-entropy takes as they are. Targets < 0 get no margin (FastReID ignores
them). Everything is tensor arithmetic, no branching on values, so the module traces cleanly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgereid.errors import ConfigError
from edgereid.modeling.config import ClassifierConfig


class LinearClassifier(nn.Module):
    """Bias-free linear layer, init N(0, 0.001²) as BoT's classifier; logits times ``scale`` (1 by default)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.001)
        self.scale = scale

    def forward(self, features: Tensor, targets: Tensor | None = None) -> Tensor:
        logits = F.linear(features, self.weight)
        return logits if self.scale == 1.0 else logits * self.scale


class _CosineClassifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.num_classes = num_classes
        self.scale = scale
        self.margin = margin

    def cosine(self, features: Tensor) -> Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def _one_hot(self, targets: Tensor, like: Tensor) -> Tensor:
        hot = F.one_hot(targets.clamp(min=0), self.num_classes).to(like.dtype)
        return hot * (targets >= 0).unsqueeze(1).to(like.dtype)

    def forward(self, features: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None:
            raise ValueError(
                f"{type(self).__name__} puts its margin on the target class: pass targets to the model in training"
            )
        cosine = self.cosine(features)
        return self.margin_logits(cosine, self._one_hot(targets, cosine))

    def margin_logits(self, cosine: Tensor, one_hot: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, scale={self.scale}, margin={self.margin}"


class ArcFace(_CosineClassifier):
    """``s·cos(θ + m)`` on the target class (Deng et al.), with insightface's/FastReID's handling where θ + m > π:
    there cos(θ + m) would rise again, so the logit continues as ``cos θ − sin(π − m)·m``; ``easy_margin`` uses
    ``cos θ`` wherever cos θ ≤ 0 instead."""

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float, easy_margin: bool) -> None:
        super().__init__(in_features, num_classes, scale, margin)
        self.easy_margin = easy_margin
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        self.threshold = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin

    def margin_logits(self, cosine: Tensor, one_hot: Tensor) -> Tensor:
        cosine = cosine.clamp(-1.0, 1.0)
        # Clamped away from 0: sqrt's gradient is infinite there.
        sine = (1.0 - cosine * cosine).clamp(min=1e-9).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > self.threshold, phi, cosine - self.mm)
        return self.scale * (one_hot * phi + (1.0 - one_hot) * cosine)


class CosFace(_CosineClassifier):
    """``s·(cos θ − m)`` on the target class (Wang et al., FastReID ``CosSoftmax``)."""

    def margin_logits(self, cosine: Tensor, one_hot: Tensor) -> Tensor:
        return self.scale * (cosine - self.margin * one_hot)


class CircleClassifier(_CosineClassifier):
    """Circle loss's classification form (Sun et al., FastReID ``CircleSoftmax``): self-paced weights α (not
    back-propagated) and margins Δp = 1 − m, Δn = m around the optimum O_p = 1 + m, O_n = −m."""

    def margin_logits(self, cosine: Tensor, one_hot: Tensor) -> Tensor:
        alpha_p = (-cosine.detach() + 1.0 + self.margin).clamp(min=0.0)
        alpha_n = (cosine.detach() + self.margin).clamp(min=0.0)
        s_p = self.scale * alpha_p * (cosine - (1.0 - self.margin))
        s_n = self.scale * alpha_n * (cosine - self.margin)
        return one_hot * s_p + (1.0 - one_hot) * s_n


def build_classifier(cfg: ClassifierConfig, in_features: int, num_classes: int) -> nn.Module:
    scale = 1.0 if cfg.scale is None else cfg.scale
    margin = 0.0 if cfg.margin is None else cfg.margin
    if cfg.kind == "linear":
        return LinearClassifier(in_features, num_classes, scale)
    if cfg.kind == "arcface":
        return ArcFace(in_features, num_classes, scale, margin, cfg.easy_margin)
    if cfg.kind == "cosface":
        return CosFace(in_features, num_classes, scale, margin)
    if cfg.kind == "circle":
        return CircleClassifier(in_features, num_classes, scale, margin)
    raise ConfigError(f"model.classifier.kind: unknown kind '{cfg.kind}'; expected linear, arcface, cosface or circle")
