"""torchreid's MobileNetV2 (``mobilenetv2_x1_0``, ``mobilenetv2_x1_4``), which is not torchvision's.

Its first bottleneck keeps the 1×1 expansion conv (expansion 1), its widths are ``int(width * multiplier)`` with no
rounding to multiples of 8, and its last conv (``conv9``, 1×1 + BN + ReLU6) widens to 1280, or 1280 × the multiplier
above 1 (1792 for x1.4). Module names follow torchreid (``conv1``…``conv9``, bottlenecks ``conv1``/``dwconv2``/
``conv3``), so its model-zoo and ImageNet files load by key. torchreid's network has output stride 32, which is
``last_stride: 2``; ``last_stride: 1`` makes conv7's stride-2 depthwise conv stride 1 (output stride 16).
"""

from __future__ import annotations

from torch import Tensor, nn

from edgereid.modeling.backbones.base import (
    Backbone,
    init_like_torchreid,
    last_stride_to_one,
    refuse_imagenet_download,
    reject_options,
)
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone

# The bottleneck stages conv2…conv8: (expansion, width at multiplier 1, blocks, stride of the first block).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_STEM_WIDTH = 32
_LAST_WIDTH = 1280


class ConvBlock(nn.Module):
    """conv (no bias) + BN + ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Inverted residual: 1×1 expansion, depthwise 3×3, linear 1×1 projection; the identity is added where the
    block keeps the shape."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int = 1) -> None:
        super().__init__()
        mid = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv1 = ConvBlock(cin, mid, 1)
        self.dwconv2 = ConvBlock(mid, mid, 3, stride, 1, groups=mid)
        self.conv3 = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.dwconv2(self.conv1(x)))
        return x + out if self.use_residual else out


class TorchreidMobileNetV2(Backbone):
    ignored_prefixes = ("classifier.",)

    def __init__(self, multiplier: float, last_stride: int) -> None:
        super().__init__()
        cin = int(_STEM_WIDTH * multiplier)
        self.conv1 = ConvBlock(3, cin, 3, stride=2, padding=1)
        for index, (expansion, width, blocks, stride) in enumerate(_STAGES, start=2):
            cout = int(width * multiplier)
            stage = [Bottleneck(cin, cout, expansion, stride)]
            stage += [Bottleneck(cout, cout, expansion) for _ in range(blocks - 1)]
            self.add_module(f"conv{index}", nn.Sequential(*stage))
            cin = cout
        self.channels = int(_LAST_WIDTH * multiplier) if multiplier > 1 else _LAST_WIDTH
        self.conv9 = ConvBlock(cin, self.channels, 1)
        if last_stride == 1:
            last_stride_to_one(self)
        init_like_torchreid(self)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.children():  # conv1 … conv9, in the order they were added
            x = layer(x)
        return x


_MULTIPLIERS = {"torchreid_mobilenetv2_x1_0": 1.0, "torchreid_mobilenetv2_x1_4": 1.4}


def _torchreid_mobilenetv2(cfg: BackboneConfig) -> TorchreidMobileNetV2:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    refuse_imagenet_download(
        cfg, "torchvision's mobilenetv2 is another network: give the path of torchreid's ImageNet file instead"
    )
    return TorchreidMobileNetV2(_MULTIPLIERS[cfg.name], last_stride=cfg.last_stride)


for _name in _MULTIPLIERS:
    register_backbone(_name)(_torchreid_mobilenetv2)
