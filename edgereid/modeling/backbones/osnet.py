"""OSNet (Zhou et al., ICCV 2019), the omni-scale ReID network, written after torchreid's ``osnet.py``.

timm has no OSNet. Module and key names follow torchreid, so its ImageNet checkpoints (``osnet_x1_0_imagenet.pth``)
load as local files. The standard network has output stride 16, which is what ``last_stride: 1`` means for every
edgereid backbone; ``last_stride: 2`` adds a 1×1 conv + 2×2 average-pool transition after conv4 (stride 32).
"""

from __future__ import annotations

from torch import Tensor, nn

from edgereid.modeling.backbones.base import Backbone, refuse_imagenet_download, reject_options
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone


class ConvLayer(nn.Module):
    """conv + BN + ReLU (the 7×7 stem)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 1)


class Conv1x1Linear(nn.Module):
    """1×1 conv + BN without activation (projections into the residual sum)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Pointwise then depthwise 3×3 (the 'lite' 3×3 of the paper) + BN + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """The unified aggregation gate: per-channel sigmoid weights from the pooled stream, shared by all scales."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))
        return x * gate


class OSBlock(nn.Module):
    """Four streams of 1–4 stacked lite 3×3 convs (receptive fields 3, 5, 7, 9), gated and summed, + residual."""

    def __init__(self, cin: int, cout: int, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.conv1(x)
        x2 = self.gate(self.conv2a(x1)) + self.gate(self.conv2b(x1)) + self.gate(self.conv2c(x1))
        x2 = x2 + self.gate(self.conv2d(x1))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(x2) + identity)


def _stage(cin: int, cout: int, blocks: int, reduce: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(cin, cout)]
    layers += [OSBlock(cout, cout) for _ in range(blocks - 1)]
    if reduce:
        layers.append(nn.Sequential(Conv1x1(cout, cout), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(Backbone):
    ignored_prefixes = ("fc.", "classifier.")

    def __init__(self, channels: tuple[int, int, int, int], last_stride: int = 1, blocks: int = 2) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c0, c1, blocks, reduce=True)
        self.conv3 = _stage(c1, c2, blocks, reduce=True)
        self.conv4 = _stage(c2, c3, blocks, reduce=last_stride == 2)
        self.conv5 = Conv1x1(c3, c3)
        self.channels = c3
        self._init_weights()

    def _init_weights(self) -> None:
        # torchreid's initialisation.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "osnet_x1_0": (64, 256, 384, 512),
    "osnet_x0_75": (48, 192, 288, 384),
    "osnet_x0_5": (32, 128, 192, 256),
    "osnet_x0_25": (16, 64, 96, 128),
}


def _osnet(cfg: BackboneConfig) -> OSNet:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    refuse_imagenet_download(
        cfg, "timm and torchvision lack OSNet: give the path of torchreid's ImageNet file instead"
    )
    return OSNet(_WIDTHS[cfg.name], last_stride=cfg.last_stride)


for _name in _WIDTHS:
    register_backbone(_name)(_osnet)
