"""The ResNet family: torchvision ResNet-18/34/50/101 and timm's ResNeXt-50 and ResNeSt-50, with the ReID options
FastReID puts on them: last stride 1, IBN-a/IBN-b (IBN-Net), squeeze-excitation (SE-ResNet) and non-local blocks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck

from edgereid.errors import ConfigError
from edgereid.modeling.backbones.base import Backbone, set_stride_one
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.layers.ibn import IBN
from edgereid.modeling.layers.non_local import NonLocal
from edgereid.modeling.layers.squeeze_excitation import SqueezeExcitation
from edgereid.modeling.registry import register_backbone

# Non-local blocks per stage, put after the stage's last blocks. Stages 2 and 3 are FastReID's R50 counts
# ([0, 2, 3, 0]); stages 1 and 4 get one where a recipe asks for them. Capped at the stage's block count.
NON_LOCAL_PER_STAGE = {1: 1, 2: 2, 3: 3, 4: 1}


class _BasicBlockSEIN(BasicBlock):
    """torchvision's BasicBlock with a squeeze-excitation before the residual addition (SE-ResNet) and IBN-b's
    InstanceNorm after it (before the ReLU); either is an Identity where the backbone has none."""

    se: nn.Module
    IN: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(self.IN(out + identity))


class _BottleneckSEIN(Bottleneck):
    """torchvision's Bottleneck with the squeeze-excitation and InstanceNorm slots of :class:`_BasicBlockSEIN`."""

    se: nn.Module
    IN: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(self.IN(out + identity))


def _with_se_in_slots(block: nn.Module) -> _BasicBlockSEIN | _BottleneckSEIN:
    """``block`` (a torchvision block) turned into its SE/IN variant, in place; the slots start as Identity."""
    if isinstance(block, _BasicBlockSEIN | _BottleneckSEIN):
        return block
    if not isinstance(block, BasicBlock | Bottleneck):
        raise TypeError(f"SE and IBN-b slots need torchvision's BasicBlock or Bottleneck, not {type(block).__name__}")
    block.__class__ = _BottleneckSEIN if isinstance(block, Bottleneck) else _BasicBlockSEIN
    block.se = nn.Identity()
    block.IN = nn.Identity()
    assert isinstance(block, _BasicBlockSEIN | _BottleneckSEIN)
    return block


def _block_out_channels(block: nn.Module) -> int:
    for name in ("bn3", "bn2"):
        norm = getattr(block, name, None)
        if isinstance(norm, nn.BatchNorm2d):
            return norm.num_features
    conv3 = getattr(block, "conv3", None)
    if isinstance(conv3, nn.Conv2d):
        return conv3.out_channels
    raise TypeError(f"cannot tell the output channels of {type(block).__name__}")


class ResNetBackbone(Backbone):
    """A torchvision or timm ResNet without its pooling and classifier, returning the layer4 map.

    The network sits in ``body`` under its own key names, so torchvision/timm/FastReID-style checkpoints load into
    it directly; non-local blocks sit beside it in ``non_local`` as FastReID keeps them (``NL_2``, ``NL_3``).
    """

    ignored_prefixes = ("fc.",)

    def __init__(
        self,
        body: nn.Module,
        *,
        name: str,
        last_stride: int = 1,
        ibn: str | None = None,
        non_local: Sequence[int] | None = None,
        se: bool = False,
        torchvision_blocks: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        # The ReID head pools and classifies; the body's own pool and fc would only cost compute and keys.
        body.fc = nn.Identity()
        body.avgpool = nn.Identity()
        self.channels = _block_out_channels(self._stage(4)[-1])
        if last_stride == 1:
            self._first_block_stride_one(self._stage(4)[0])
        if ibn == "a":
            self._add_ibn_a()
        elif ibn == "b":
            if not torchvision_blocks:
                raise ConfigError(
                    f"model.backbone.ibn: 'b' is implemented for the torchvision ResNets (resnet18/34/50/101), "
                    f"not '{name}'; use ibn: a"
                )
            self._add_ibn_b()
        if se:
            self._add_se()
        self.non_local = nn.ModuleDict()
        self._non_local_after: dict[int, list[int]] = {}
        for stage in non_local or []:
            blocks = len(self._stage(stage))
            count = min(NON_LOCAL_PER_STAGE[stage], blocks)
            width = _block_out_channels(self._stage(stage)[-1])
            self._non_local_after[stage] = list(range(blocks - count, blocks))
            self.non_local[f"stage{stage}"] = nn.ModuleList(NonLocal(width) for _ in range(count))

    def _stage(self, stage: int) -> nn.Sequential:
        layer = getattr(self.body, f"layer{stage}")
        assert isinstance(layer, nn.Sequential)
        return layer

    @staticmethod
    def _first_block_stride_one(block: nn.Module) -> None:
        # Every stride-2 layer of layer4's first block (the main path's conv and the shortcut's conv or, in
        # ResNet-D/ResNeSt, average pool) must go, or the two paths disagree in size.
        for parent in list(block.modules()):
            for child_name, child in list(parent.named_children()):
                stride = getattr(child, "stride", None)
                if isinstance(child, nn.Conv2d) and child.stride == (2, 2):
                    set_stride_one(child)
                elif isinstance(child, nn.AvgPool2d) and stride in (2, (2, 2)):
                    setattr(parent, child_name, nn.Identity())

    def _add_ibn_a(self, stages: Sequence[int] = (1, 2, 3)) -> None:
        # IBN-a (IBN-Net, FastReID): the first norm of every block in layers 1–3 becomes half IN, half BN; layer4
        # stays BN, as its features must stay discriminative (FastReID's ResNeXt puts it in layer4 too).
        for stage in stages:
            for block in self._stage(stage):
                bn1 = getattr(block, "bn1", None)
                if not isinstance(bn1, nn.BatchNorm2d):
                    raise ConfigError(f"model.backbone.ibn: 'a' needs blocks with a bn1 BatchNorm, not {type(block)}")
                block.bn1 = IBN.from_batch_norm(bn1)

    def _add_ibn_b(self) -> None:
        # IBN-b (IBN-Net's resnet_ibn_b): IN replaces the stem's BN, and the last blocks of layers 1 and 2 get IN
        # after the residual addition.
        stem_bn = self.body.bn1
        assert isinstance(stem_bn, nn.BatchNorm2d)
        self.body.bn1 = nn.InstanceNorm2d(stem_bn.num_features, affine=True)
        for stage in (1, 2):
            block = self._stage(stage)[-1]
            _with_se_in_slots(block).IN = nn.InstanceNorm2d(_block_out_channels(block), affine=True)

    def _add_se(self) -> None:
        # FastReID's SE-ResNet: every block of all four stages, on the block's output width.
        for stage in (1, 2, 3, 4):
            for block in self._stage(stage):
                _with_se_in_slots(block).se = SqueezeExcitation(_block_out_channels(block))

    def forward(self, x: Tensor) -> Tensor:
        body: Any = self.body  # a torchvision or a timm ResNet; both have these attributes
        act = body.relu if hasattr(body, "relu") else body.act1  # torchvision / timm name
        stem = [body.conv1, body.bn1, act, body.maxpool]
        for layer in stem:
            x = layer(x)
        for stage in (1, 2, 3, 4):
            after = self._non_local_after.get(stage, [])
            for index, block in enumerate(self._stage(stage)):
                x = block(x)
                if index in after:
                    blocks = self.non_local[f"stage{stage}"]
                    assert isinstance(blocks, nn.ModuleList)
                    x = blocks[after.index(index)](x)
        return x

    @property
    def pretrained_target(self) -> nn.Module:
        return self.body

    def remap_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # A plain-ResNet checkpoint into an IBN-a model: split each block's bn1 the way IBN.from_batch_norm does.
        mapped = dict(state)
        target_keys = set(self.body.state_dict())
        for key, value in state.items():
            prefix, _, param = key.rpartition(".")
            if not prefix.endswith(".bn1") or f"{prefix}.BN.{param}" not in target_keys:
                continue
            del mapped[key]
            if value.dim() == 0:  # num_batches_tracked
                mapped[f"{prefix}.BN.{param}"] = value
                continue
            half = value.shape[0] // 2
            mapped[f"{prefix}.BN.{param}"] = value[half:]
            if param in ("weight", "bias"):
                mapped[f"{prefix}.IN.{param}"] = value[:half]
        return mapped


_TORCHVISION: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
}
# Registered name → timm model name.
_TIMM = {"resnext50": "resnext50_32x4d", "resnest50": "resnest50d"}


def _torchvision_resnet(cfg: BackboneConfig) -> ResNetBackbone:
    weights = "IMAGENET1K_V1" if cfg.pretrained == "imagenet" else None
    body = _TORCHVISION[cfg.name](weights=weights)
    return ResNetBackbone(
        body, name=cfg.name, last_stride=cfg.last_stride, ibn=cfg.ibn, non_local=cfg.non_local, se=cfg.se
    )


def _timm_resnet(cfg: BackboneConfig) -> ResNetBackbone:
    import timm

    body = timm.create_model(_TIMM[cfg.name], pretrained=cfg.pretrained == "imagenet", num_classes=0, global_pool="")
    return ResNetBackbone(
        body,
        name=cfg.name,
        last_stride=cfg.last_stride,
        ibn=cfg.ibn,
        non_local=cfg.non_local,
        torchvision_blocks=False,
    )


for _name in _TORCHVISION:
    register_backbone(_name)(_torchvision_resnet)
for _name in _TIMM:
    register_backbone(_name)(_timm_resnet)
