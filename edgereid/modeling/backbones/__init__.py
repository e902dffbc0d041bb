"""The built-in backbones; importing this package registers them."""

from edgereid.modeling.backbones import efficientnet, fastreid_resnet, mobilenet, osnet, plaincnn, resnet
from edgereid.modeling.backbones.base import Backbone

__all__ = ["Backbone", "efficientnet", "fastreid_resnet", "mobilenet", "osnet", "plaincnn", "resnet"]
