"""OSNet (Zhou et al., ICCV 2019), the omni-scale ReID network, written after torchreid's ``osnet.py`` and
``osnet_ain.py``.

timm has no OSNet. Module and key names follow torchreid, so its ImageNet checkpoints (``osnet_x1_0_imagenet.pth``,
``osnet_ain_x1_0_imagenet.pth``) load as local files. The standard network has output stride 16, which is what
``last_stride: 1`` means for every edgereid backbone; ``last_stride: 2`` adds a 1×1 conv + 2×2 average-pool
transition after conv4 (stride 32).

``osnet_ibn_x1_0`` is torchreid's IBN variant: InstanceNorm in the stem and after the residual sum of conv2's
blocks; ``osnet_ibn_x0_75``/``x0_5``/``x0_25`` are the same at the narrower widths, which FastReID builds
(``WITH_IBN`` at any ``DEPTH``) and torchreid does not. ``osnet_ain_*`` are torchreid's AIN networks (Zhou et al.,
TPAMI 2021): InstanceNorm in the stem and, in some blocks (``OSBlockINin``), on the residual branch in place of
the projection's BN; their blocks name the streams ``conv2.0``…``conv2.3`` and their stage transitions are modules
of their own (``pool2``, ``pool3``), as torchreid's keys are. InstanceNorm normalises each image with its own
statistics, so BN folding leaves it in place and the exported graph computes it (ONNX InstanceNormalization).

The ``*_fc512`` names are torchreid's whole ReID model up to its test feature: the backbone, global average
pooling and torchreid's ``fc`` (Linear 512 + BN + ReLU), broadcast over the conv5 map's positions (a B×512×h×w
map at the usual output stride, every position the same feature). With ``pooling: avg`` and
``head.neck_feat: before`` the edgereid model's embedding is then exactly torchreid's eval-mode output, which is
how ``edgereid import torchreid`` expresses torchreid's model-zoo files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from edgereid.modeling.backbones.base import (
    Backbone,
    init_like_torchreid,
    refuse_imagenet_download,
    reject_options,
)
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone


class ConvLayer(nn.Module):
    """conv + BN (or InstanceNorm: torchreid's ``IN=True`` stem) + ReLU (the 7×7 stem)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, instance_norm: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn: nn.Module = nn.InstanceNorm2d(cout, affine=True) if instance_norm else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 1)


class Conv1x1Linear(nn.Module):
    """1×1 conv + BN without activation (projections into the residual sum); without ``bn`` when an
    InstanceNorm follows instead (``OSBlockINin``)."""

    def __init__(self, cin: int, cout: int, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


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


class LightConvStream(nn.Module):
    """``depth`` stacked lite 3×3 convs, under osnet_ain.py's key names (``layers.N``)."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(LightConv3x3(channels, channels) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


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


def _gated_sum(gate: ChannelGate, streams: Iterable[nn.Module], x: Tensor) -> Tensor:
    """The streams' outputs on ``x``, each weighted by the shared gate, summed (in stream order, as torchreid)."""
    total: Tensor | None = None
    for stream in streams:
        gated = gate(stream(x))
        total = gated if total is None else total + gated
    assert total is not None
    return total


class OSBlock(nn.Module):
    """Four streams of 1–4 stacked lite 3×3 convs (receptive fields 3, 5, 7, 9), gated and summed, + residual
    (with ``instance_norm``, torchreid's ``IN``: InstanceNorm on the sum before the ReLU)."""

    def __init__(self, cin: int, cout: int, bottleneck_reduction: int = 4, instance_norm: bool = False) -> None:
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
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x2 = _gated_sum(self.gate, (self.conv2a, self.conv2b, self.conv2c, self.conv2d), self.conv1(x))
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(x2) + identity
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class AINBlock(nn.Module):
    """osnet_ain.py's omni-scale block: the streams of :class:`OSBlock` as ``conv2.0``…``conv2.3``; with
    ``instance_norm`` its ``OSBlockINin``, whose residual branch ends in InstanceNorm instead of the projection's BN
    (the identity path is not normalised), else its plain ``OSBlock``."""

    def __init__(self, cin: int, cout: int, instance_norm: bool, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2 = nn.ModuleList(LightConvStream(mid, depth) for depth in range(1, 5))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout, bn=not instance_norm)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.conv3(_gated_sum(self.gate, self.conv2, self.conv1(x)))
        if self.IN is not None:
            branch = self.IN(branch)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(branch + identity)


def _transition(channels: int) -> nn.Sequential:
    """1×1 conv + 2×2 average pool: halves the map between stages."""
    return nn.Sequential(Conv1x1(channels, channels), nn.AvgPool2d(2, stride=2))


def _stage(cin: int, cout: int, blocks: int, reduce: bool, instance_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(cin, cout, instance_norm=instance_norm)]
    layers += [OSBlock(cout, cout, instance_norm=instance_norm) for _ in range(blocks - 1)]
    if reduce:
        layers.append(_transition(cout))
    return nn.Sequential(*layers)


def _ain_stage(cin: int, cout: int, instance_norm: Sequence[bool]) -> nn.Sequential:
    return nn.Sequential(
        *(AINBlock(cin if index == 0 else cout, cout, norm) for index, norm in enumerate(instance_norm))
    )


# Which blocks of conv2, conv3 and conv4 are OSBlockINin in every osnet_ain network of torchreid.
_AIN_INSTANCE_NORM = ((True, True), (False, True), (True, False))


class OSNet(Backbone):
    """torchreid's OSNet (``ain=False``: osnet.py, IBN with ``instance_norm``) or its AIN network (``ain=True``)."""

    ignored_prefixes = ("fc.", "classifier.")

    def __init__(
        self,
        channels: tuple[int, int, int, int],
        last_stride: int = 1,
        blocks: int = 2,
        instance_norm: bool = False,
        fc_dim: int | None = None,
        ain: bool = False,
    ) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3, instance_norm=instance_norm or ain)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # osnet.py ends conv2 and conv3 with their transitions; osnet_ain.py has them as pool2 and pool3.
        transitions: tuple[nn.Sequential | None, ...] = (None, None, None)
        if ain:
            self.conv2 = _ain_stage(c0, c1, _AIN_INSTANCE_NORM[0])
            self.conv3 = _ain_stage(c1, c2, _AIN_INSTANCE_NORM[1])
            self.conv4 = _ain_stage(c2, c3, _AIN_INSTANCE_NORM[2])
            transitions = (_transition(c1), _transition(c2), _transition(c3) if last_stride == 2 else None)
        else:
            self.conv2 = _stage(c0, c1, blocks, reduce=True, instance_norm=instance_norm)
            self.conv3 = _stage(c1, c2, blocks, reduce=True)
            self.conv4 = _stage(c2, c3, blocks, reduce=last_stride == 2)
        self.pool2, self.pool3, self.pool4 = transitions
        self.conv5 = Conv1x1(c3, c3)
        self.channels = c3
        # torchreid's feature layer: global average pooling, then Linear + BatchNorm1d + ReLU.
        self.fc: nn.Sequential | None = None
        if fc_dim is not None:
            self.fc = nn.Sequential(nn.Linear(c3, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True))
            self.channels = fc_dim
        init_like_torchreid(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        for stage, transition in ((self.conv2, self.pool2), (self.conv3, self.pool3), (self.conv4, self.pool4)):
            x = stage(x)
            if transition is not None:
                x = transition(x)
        x = self.conv5(x)
        if self.fc is None:
            return x
        # torchreid's feature at every position of the map: the backbone keeps its output stride (the local branch
        # sees h stripes), and global pooling returns the feature itself.
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])


_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "osnet_x1_0": (64, 256, 384, 512),
    "osnet_x0_75": (48, 192, 288, 384),
    "osnet_x0_5": (32, 128, 192, 256),
    "osnet_x0_25": (16, 64, 96, 128),
}


# torchreid's feature width after its fc layer (``feature_dim=512`` for every OSNet of its model zoo).
TORCHREID_FC_DIM = 512
_FC_SUFFIX = f"_fc{TORCHREID_FC_DIM}"
_IBN_PREFIX = "osnet_ibn_"
_IBN_NAMES = [name.replace("osnet_", _IBN_PREFIX, 1) for name in _WIDTHS]
_AIN_PREFIX = "osnet_ain_"
_AIN_NAMES = [name.replace("osnet_", _AIN_PREFIX, 1) for name in _WIDTHS]


def _osnet(cfg: BackboneConfig) -> OSNet:
    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    refuse_imagenet_download(
        cfg, "timm and torchvision lack OSNet: give the path of torchreid's ImageNet file instead"
    )
    name = cfg.name.removesuffix(_FC_SUFFIX)
    ibn, ain = name.startswith(_IBN_PREFIX), name.startswith(_AIN_PREFIX)
    widths = _WIDTHS[name.replace(_IBN_PREFIX, "osnet_", 1).replace(_AIN_PREFIX, "osnet_", 1)]
    fc_dim = TORCHREID_FC_DIM if cfg.name.endswith(_FC_SUFFIX) else None
    return OSNet(widths, last_stride=cfg.last_stride, instance_norm=ibn, fc_dim=fc_dim, ain=ain)


for _name in [*_WIDTHS, *_IBN_NAMES, *_AIN_NAMES]:
    register_backbone(_name)(_osnet)
    register_backbone(_name + _FC_SUFFIX)(_osnet)
