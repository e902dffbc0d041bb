"""The training criterion: the weighted sum of the losses a `LossConfig` turns on, on a model's training outputs.

Feature conventions are FastReID's: cross-entropy on ``logits`` (the classifier applied to the BN feature, with
its margin for ArcFace/CosFace/Circle heads), triplet and Circle on the pre-BN ``global_feat``. The AlignedReID
local triplet loss takes the shortest-path distances between the ``local_feat`` stripes at the pairs mined on the
global distances, as the paper does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from edgereid.errors import ConfigError
from edgereid.losses.classification import (
    adaptive_cross_entropy_label_smoothing,
    cross_entropy_label_smoothing,
)
from edgereid.losses.config import LossConfig
from edgereid.losses.metric import (
    batch_hard_triplets,
    distance_triplet_loss,
    feature_distances,
    mined_triplet_loss,
    pairwise_circle_loss,
)


class ReIDCriterion:
    """``criterion(outputs, targets) -> (total, losses)``.

    ``outputs`` is the model's training outputs (``global_feat`` (B, C), ``bn_feat``, ``logits`` (B, K) and, for
    AlignedReID models, ``local_feat`` (B, h, C)); ``targets`` (B,) the identities as class indices. ``total`` is
    the scalar to back-propagate; ``losses`` maps each enabled loss (named as in the config: ``ce``, ``triplet``,
    ``circle``, ``local_triplet``) to its weighted value, detached, for logging: they add up to ``total``.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def __call__(self, outputs: Mapping[str, Tensor], targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        weighted: dict[str, Tensor] = {}
        if cfg.ce.weight > 0:
            logits = _output(outputs, "logits", "ce")
            if cfg.ce.epsilon == "adaptive":
                ce = adaptive_cross_entropy_label_smoothing(logits, targets, cfg.ce.alpha)
            else:
                ce = cross_entropy_label_smoothing(logits, targets, cfg.ce.epsilon)
            weighted["ce"] = cfg.ce.weight * ce
        if cfg.triplet.weight > 0 or cfg.local_triplet.weight > 0:
            needs_global = "triplet" if cfg.triplet.weight > 0 else "local_triplet"
            global_dist = feature_distances(
                _output(outputs, "global_feat", needs_global), cfg.triplet.normalize
            )
            if cfg.triplet.weight > 0:
                weighted["triplet"] = cfg.triplet.weight * distance_triplet_loss(
                    global_dist,
                    targets,
                    margin=cfg.triplet.margin,
                    soft_margin=cfg.triplet.soft_margin,
                    hard_mining=cfg.triplet.hard_mining,
                )
            if cfg.local_triplet.weight > 0:
                local_dist = _local_distances(_output(outputs, "local_feat", "local_triplet"))
                weighted["local_triplet"] = cfg.local_triplet.weight * mined_triplet_loss(
                    local_dist, batch_hard_triplets(global_dist, targets), margin=cfg.local_triplet.margin
                )
        if cfg.circle.weight > 0:
            global_feat = _output(outputs, "global_feat", "circle")
            weighted["circle"] = cfg.circle.weight * pairwise_circle_loss(
                global_feat, targets, margin=cfg.circle.margin, gamma=cfg.circle.gamma
            )
        total = torch.stack(list(weighted.values())).sum()
        return total, {name: loss.detach() for name, loss in weighted.items()}


def _output(outputs: Mapping[str, Tensor], key: str, loss: str) -> Tensor:
    if key not in outputs:
        raise ConfigError(
            f"losses.{loss}.weight is above 0, but the model's training outputs have no {key!r} (they have "
            f"{', '.join(sorted(outputs))}); set the weight to 0 or use a model that outputs {key!r}"
        )
    return outputs[key]


def _local_distances(local_feat: Tensor) -> Tensor:
    # Imported on use, so that importing the losses never imports edgereid.modeling, which may import them.
    from edgereid.modeling.aligned import local_distance_matrix

    return local_distance_matrix(local_feat, local_feat)
