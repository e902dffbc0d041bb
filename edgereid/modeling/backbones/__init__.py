"""The built-in backbones; importing this package registers them."""

from edgereid.modeling.backbones import (
    efficientnet,
    fastreid_resnest,
    fastreid_resnet,
    mobilenet,
    osnet,
    plaincnn,
    resnet,
    torchreid_mobilenet,
)
from edgereid.modeling.backbones.base import Backbone

__all__ = [
    "Backbone", "efficientnet", "fastreid_resnest", "fastreid_resnet", "mobilenet", "osnet", "plaincnn", "resnet", "torchreid_mobilenet",
]
