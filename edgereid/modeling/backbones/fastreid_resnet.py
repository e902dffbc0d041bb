"""FastReID's own ResNet and ResNeXt (``fastreid/modeling/backbones/resnet.py``, ``resnext.py``):
``fastreid_resnet18/34/50/101`` and ``fastreid_resnext50/101`` (32×4d).

They differ from torchvision's networks in places that change the output, so FastReID checkpoints need backbones
of their own to be reproduced exactly (``edgereid import fastreid``):

- the ResNet stem's max pool is ``MaxPool2d(3, stride=2, ceil_mode=True)`` without padding (torchvision pads by 1;
  FastReID's ResNeXt keeps torchvision's);
- the non-local blocks have one inner channel (``reduc_ratio // reduc_ratio``), FastReID's counts per stage
  (R50 [0, 2, 3, 0], R101 [0, 2, 9, 0], none for R18/34, [0, 2, 3, 0] for both ResNeXts) after each stage's last
  blocks;
- IBN-a covers layers 1–3 of the ResNet but all four layers of the ResNeXt;
- ResNeXt-101 is 32×4d, a width torchvision builds but ships no weights for.

Everything else (blocks, key names, last stride, SE) is the torchvision ResNet of ``resnet.py``, so the key names
are the same as there and a plain ResNet checkpoint still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import Bottleneck

from edgereid.errors import ConfigError
from edgereid.modeling.backbones.base import refuse_imagenet_download
from edgereid.modeling.backbones.resnet import ResNetBackbone, _block_out_channels
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.layers.non_local import NonLocal
from edgereid.modeling.registry import register_backbone


def _resnext101_32x4d(weights: str | None) -> tvm.ResNet:
    assert weights is None  # refused before: torchvision has 32×8d and 64×4d weights only
    return tvm.ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)


@dataclass(frozen=True)
class _Variant:
    build: Callable[..., tvm.ResNet]  # torchvision's builder, called with weights=
    non_local: tuple[int, int, int, int]  # FastReID's ``nl_layers_per_stage``
    unpadded_stem_pool: bool
    ibn_layer4: bool
    imagenet: bool = True


VARIANTS = {
    "fastreid_resnet18": _Variant(tvm.resnet18, (0, 0, 0, 0), unpadded_stem_pool=True, ibn_layer4=False),
    "fastreid_resnet34": _Variant(tvm.resnet34, (0, 0, 0, 0), unpadded_stem_pool=True, ibn_layer4=False),
    "fastreid_resnet50": _Variant(tvm.resnet50, (0, 2, 3, 0), unpadded_stem_pool=True, ibn_layer4=False),
    "fastreid_resnet101": _Variant(tvm.resnet101, (0, 2, 9, 0), unpadded_stem_pool=True, ibn_layer4=False),
    "fastreid_resnext50": _Variant(tvm.resnext50_32x4d, (0, 2, 3, 0), unpadded_stem_pool=False, ibn_layer4=True),
    "fastreid_resnext101": _Variant(
        _resnext101_32x4d, (0, 2, 3, 0), unpadded_stem_pool=False, ibn_layer4=True, imagenet=False
    ),
}


class FastReIDResNet(ResNetBackbone):
    """torchvision's ResNet/ResNeXt with FastReID's stem pooling, IBN-a and non-local blocks (see the module
    docstring)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        if cfg.ibn == "b":
            raise ConfigError(f"model.backbone.ibn: FastReID's ResNets have IBN-a only, not 'b' ('{cfg.name}')")
        variant = VARIANTS[cfg.name]
        if not variant.imagenet:
            refuse_imagenet_download(cfg, "train from a local file (pretrained: PATH) or from scratch")
        weights = "IMAGENET1K_V1" if cfg.pretrained == "imagenet" else None
        super().__init__(
            variant.build(weights=weights), name=cfg.name, last_stride=cfg.last_stride, ibn=cfg.ibn, se=cfg.se
        )
        body = self.body
        assert isinstance(body, nn.Module)
        if variant.unpadded_stem_pool:
            body.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        if cfg.ibn == "a" and variant.ibn_layer4:
            self._add_ibn_a(stages=(4,))
        counts = variant.non_local
        for stage in cfg.non_local:
            count = counts[stage - 1]
            if count == 0:
                raise ConfigError(
                    f"model.backbone.non_local: FastReID's {cfg.name.removeprefix('fastreid_')} has no non-local "
                    f"blocks in stage {stage}; its stages with them: "
                    f"{[index + 1 for index, n in enumerate(counts) if n] or 'none'}"
                )
            blocks = len(self._stage(stage))
            width = _block_out_channels(self._stage(stage)[-1])
            self._non_local_after[stage] = list(range(blocks - count, blocks))
            # reduc_ratio = width: one inner channel, as FastReID's Non_local.
            self.non_local[f"stage{stage}"] = nn.ModuleList(NonLocal(width, reduc_ratio=width) for _ in range(count))


def _fastreid_resnet(cfg: BackboneConfig) -> FastReIDResNet:
    return FastReIDResNet(cfg)


for _name in VARIANTS:
    register_backbone(_name)(_fastreid_resnet)
