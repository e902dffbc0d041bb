"""Building blocks shared by the backbones and heads."""

from edgereid.modeling.layers.ibn import IBN
from edgereid.modeling.layers.non_local import NonLocal
from edgereid.modeling.layers.pooling import (
    AttentionPool,
    GeMPool,
    GlobalAvgPool,
    GlobalMaxPool,
    build_pooling,
)

__all__ = ["IBN", "AttentionPool", "GeMPool", "GlobalAvgPool", "GlobalMaxPool", "NonLocal", "build_pooling"]
