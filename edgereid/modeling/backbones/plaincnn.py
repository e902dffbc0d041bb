"""A plain VGG-style CNN for small crops and CPU training: the quickstart's and the demo's student.

Four stages of two 3×3 conv-BN-ReLU layers, each followed by a 2×2 max pool; channels double per stage from the
width in the name (``plaincnn16``: 16, 32, 64, 128). The first stage works at the input resolution: ImageNet
backbones drop to 1/4 of it in their stem, which at 64×32 leaves a pedestrian about 2 pixels wide before any
feature is learnt. Plain convolutions and ReLU quantize cleanly to INT8 and run on every accelerator.

On the synthetic data set at 64×32 on 2 CPU cores, ``plaincnn16`` trains about 4.6× faster than ResNet-18 per
image and reaches nearly 4× its mAP in the quickstart's budget (docs/BENCHMARKS.md, "Training"). There
are no ImageNet weights for it: it trains from scratch.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgereid.modeling.backbones.base import Backbone, refuse_imagenet_download, reject_options
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone

_STAGES = 4


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers += [
            nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class PlainCNN(Backbone):
    """Output stride 16 at ``last_stride: 1``, as the other backbones; ``last_stride: 2`` adds a fifth max pool."""

    def __init__(self, width: int, last_stride: int) -> None:
        super().__init__()
        widths = [width * 2**stage for stage in range(_STAGES)]
        stages: list[nn.Module] = []
        in_channels = 3
        for channels in widths:
            stages.append(_stage(in_channels, channels))
            in_channels = channels
        if last_stride == 2:
            stages.append(nn.MaxPool2d(2))
        self.stages = nn.Sequential(*stages)
        self.channels = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)


_WIDTHS = {"plaincnn16": 16, "plaincnn32": 32}


def _plaincnn(cfg: BackboneConfig) -> PlainCNN:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    refuse_imagenet_download(cfg, "it has no ImageNet weights and trains from scratch: leave pretrained out")
    return PlainCNN(_WIDTHS[cfg.name], last_stride=cfg.last_stride)


for _name in _WIDTHS:
    register_backbone(_name)(_plaincnn)
