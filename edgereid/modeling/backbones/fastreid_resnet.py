"""FastReID's own ResNet (``fastreid/modeling/backbones/resnet.py``): ``fastreid_resnet18/34/50/101``.

It differs from torchvision's in two places that change the output, so FastReID checkpoints need a backbone of
their own to be reproduced exactly (``edgereid import fastreid``):

- the stem's max pool is ``MaxPool2d(3, stride=2, ceil_mode=True)`` without padding (torchvision pads by 1);
- its non-local blocks have one inner channel (``reduc_ratio // reduc_ratio``), FastReID's counts per stage
  (R50 [0, 2, 3, 0], R101 [0, 2, 9, 0], none for R18/34) after each stage's last blocks.

Everything else (blocks, key names, IBN-a on layers 1–3, last stride) is the torchvision ResNet of
``resnet.py``, so the key names are the same as there and a plain ResNet checkpoint still loads.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from edgereid.errors import ConfigError
from edgereid.modeling.backbones.resnet import ResNetBackbone, _block_out_channels
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.layers.non_local import NonLocal
from edgereid.modeling.registry import register_backbone

# FastReID's non-local blocks per stage, by depth (``nl_layers_per_stage``).
FASTREID_NON_LOCAL = {
    "fastreid_resnet18": (0, 0, 0, 0),
    "fastreid_resnet34": (0, 0, 0, 0),
    "fastreid_resnet50": (0, 2, 3, 0),
    "fastreid_resnet101": (0, 2, 9, 0),
}
_TORCHVISION = {
    "fastreid_resnet18": tvm.resnet18,
    "fastreid_resnet34": tvm.resnet34,
    "fastreid_resnet50": tvm.resnet50,
    "fastreid_resnet101": tvm.resnet101,
}


class FastReIDResNet(ResNetBackbone):
    """torchvision's ResNet with FastReID's stem pooling and non-local blocks (see the module docstring)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        if cfg.ibn == "b":
            raise ConfigError(f"model.backbone.ibn: FastReID's ResNet has IBN-a only, not 'b' ('{cfg.name}')")
        weights = "IMAGENET1K_V1" if cfg.pretrained == "imagenet" else None
        super().__init__(
            _TORCHVISION[cfg.name](weights=weights), name=cfg.name, last_stride=cfg.last_stride, ibn=cfg.ibn
        )
        body = self.body
        assert isinstance(body, nn.Module)
        body.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        counts = FASTREID_NON_LOCAL[cfg.name]
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


for _name in _TORCHVISION:
    register_backbone(_name)(_fastreid_resnet)
