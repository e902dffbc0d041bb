"""Training losses (FastReID's definitions) and the criterion that weighs them as a recipe's ``losses`` says.

The configuration (`LossConfig`, `parse_loss_config`) needs only pydantic; every other name needs torch and is
imported on first use, so that reading a recipe does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from edgereid.losses.config import (
    CircleConfig,
    CrossEntropyConfig,
    LocalTripletConfig,
    LossConfig,
    TripletConfig,
    parse_loss_config,
)

if TYPE_CHECKING:
    from edgereid.losses.classification import (
        adaptive_cross_entropy_label_smoothing,
        cross_entropy_label_smoothing,
    )
    from edgereid.losses.combined import ReIDCriterion
    from edgereid.losses.metric import (
        MinedTriplets,
        batch_hard_triplets,
        cosine_dist,
        distance_triplet_loss,
        euclidean_dist,
        feature_distances,
        mined_triplet_loss,
        pairwise_circle_loss,
        triplet_loss,
    )
    from edgereid.losses.mutual import distillation_kl_loss, kl_mutual_loss, metric_mutual_loss

# Name -> submodule, for the names that need torch.
_LAZY = {
    "adaptive_cross_entropy_label_smoothing": "classification",
    "cross_entropy_label_smoothing": "classification",
    "ReIDCriterion": "combined",
    "MinedTriplets": "metric",
    "batch_hard_triplets": "metric",
    "cosine_dist": "metric",
    "distance_triplet_loss": "metric",
    "euclidean_dist": "metric",
    "feature_distances": "metric",
    "mined_triplet_loss": "metric",
    "pairwise_circle_loss": "metric",
    "triplet_loss": "metric",
    "distillation_kl_loss": "mutual",
    "kl_mutual_loss": "mutual",
    "metric_mutual_loss": "mutual",
}

__all__ = [
    "CircleConfig",
    "CrossEntropyConfig",
    "LocalTripletConfig",
    "LossConfig",
    "MinedTriplets",
    "ReIDCriterion",
    "TripletConfig",
    "adaptive_cross_entropy_label_smoothing",
    "batch_hard_triplets",
    "cosine_dist",
    "cross_entropy_label_smoothing",
    "distance_triplet_loss",
    "distillation_kl_loss",
    "euclidean_dist",
    "feature_distances",
    "kl_mutual_loss",
    "metric_mutual_loss",
    "mined_triplet_loss",
    "pairwise_circle_loss",
    "parse_loss_config",
    "triplet_loss",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
