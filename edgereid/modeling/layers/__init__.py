"""Building blocks shared by the backbones and heads."""

from edgereid.modeling.layers.ibn import IBN
from edgereid.modeling.layers.non_local import NonLocal
from edgereid.modeling.layers.pooling import (
    AttentionPool,
    ClipGlobalAvgPool,
    GeMPool,
    GlobalAvgMaxPool,
    GlobalAvgPool,
    GlobalMaxPool,
    build_pooling,
)
from edgereid.modeling.layers.squeeze_excitation import SqueezeExcitation

__all__ = [
    "IBN",
    "AttentionPool",
    "ClipGlobalAvgPool",
    "GeMPool",
    "GlobalAvgMaxPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "NonLocal",
    "SqueezeExcitation",
    "build_pooling",
]
