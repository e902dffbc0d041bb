"""FastReID's ResNeSt (``fastreid/modeling/backbones/resnest.py``): ``fastreid_resnest50/101/200/269``.

timm's ResNeSts (``resnest50d``, ``resnest101e``, ``resnest200e``, ``resnest269e``: deep stem of FastReID's width,
average-pool shortcuts, split-attention blocks with radix 2) have FastReID's layers and key names. FastReID's last
stride 1 is a dilation rather than a removed stride: layer4 keeps output stride 16 and dilates its later blocks by 2,
as timm's ``output_stride=16``, except in layer4's first block, where FastReID keeps

- the avd pool (the 3×3 average pool that takes conv2's stride) at stride 1: it gives one to every stage's first
  block but layer1's, whatever its stride;
- a 1×1 average pool (nothing) in the shortcut, where timm puts a 2×2 "same" pool.

FastReID's ResNeSt reads no WITH_IBN, WITH_NL or WITH_SE, so these backbones have no ``ibn``/``non_local``/``se``.
"""

from __future__ import annotations

from torch import nn

from edgereid.errors import ConfigError
from edgereid.modeling.backbones.resnet import ResNetBackbone
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone

# Registered name → timm model name.
_TIMM = {
    "fastreid_resnest50": "resnest50d",
    "fastreid_resnest101": "resnest101e",
    "fastreid_resnest200": "resnest200e",
    "fastreid_resnest269": "resnest269e",
}


def _fastreid_resnest(cfg: BackboneConfig) -> ResNetBackbone:
    import timm

    for key, value in (("ibn", cfg.ibn), ("non_local", cfg.non_local)):
        if value:
            raise ConfigError(
                f"model.backbone.{key}: FastReID's ResNeSt has no such option, got {value!r} for '{cfg.name}'; "
                "leave it out"
            )
    body = timm.create_model(
        _TIMM[cfg.name],
        pretrained=cfg.pretrained == "imagenet",
        num_classes=0,
        global_pool="",
        output_stride=16 if cfg.last_stride == 1 else 32,
    )
    if cfg.last_stride == 1:
        first = body.get_submodule("layer4.0")
        first.avd_last = nn.AvgPool2d(3, stride=1, padding=1)
        shortcut = first.get_submodule("downsample")
        assert isinstance(shortcut, nn.Sequential)  # timm's average-pool shortcut: pool, conv, norm
        shortcut[0] = nn.Identity()
    # Already at output stride 16 where last_stride is 1: ResNetBackbone finds no stride 2 left to remove.
    return ResNetBackbone(body, name=cfg.name, last_stride=cfg.last_stride, torchvision_blocks=False)


for _name in _TIMM:
    register_backbone(_name)(_fastreid_resnest)
