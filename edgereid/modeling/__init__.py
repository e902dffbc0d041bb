"""ReID models: backbones behind a registry, pooling, the BN-neck head, margin classifiers, AlignedReID.

``create_model(ModelConfig, num_classes)`` builds a `ReIDModel`; ``register_backbone`` adds a backbone.
"""

from edgereid.modeling.aligned import AlignedLocalBranch, local_distance_matrix
from edgereid.modeling.backbones import Backbone
from edgereid.modeling.config import (
    BackboneConfig,
    ClassifierConfig,
    HeadConfig,
    LocalBranchConfig,
    ModelConfig,
    parse_model_config,
)
from edgereid.modeling.model import ReIDModel, create_model
from edgereid.modeling.pretrained import LoadReport, load_pretrained
from edgereid.modeling.registry import available_backbones, register_backbone

__all__ = [
    "AlignedLocalBranch",
    "Backbone",
    "BackboneConfig",
    "ClassifierConfig",
    "HeadConfig",
    "LoadReport",
    "LocalBranchConfig",
    "ModelConfig",
    "ReIDModel",
    "available_backbones",
    "create_model",
    "load_pretrained",
    "local_distance_matrix",
    "parse_model_config",
    "register_backbone",
]
