"""What every backbone provides: a B×C×h×w map, its channel count, and hooks for loading local weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from edgereid.errors import ConfigError
from edgereid.modeling.config import BackboneConfig


class Backbone(nn.Module):
    """Base class of the registered backbones.

    ``channels`` is C of the output map. ``pretrained_target`` is the sub-module whose state-dict keys match the
    source model's (torchvision/timm/torchreid), so their checkpoints load without prefixes; ``ignored_prefixes``
    are the source model's classifier keys, dropped on load because the ReID head replaces the classifier.
    """

    channels: int
    ignored_prefixes: tuple[str, ...] = ()

    @property
    def pretrained_target(self) -> nn.Module:
        return self

    def remap_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map a foreign checkpoint's keys onto ``pretrained_target``'s; identity unless a backbone knows a format."""
        return dict(state)


def reject_options(name: str, *, ibn: str | None, non_local: Sequence[int]) -> None:
    """Refuse ResNet-only options on other backbones instead of silently ignoring them."""
    if ibn is not None:
        raise ConfigError(f"model.backbone.ibn: '{ibn}' applies to ResNet backbones only, not '{name}'; leave it out")
    if non_local:
        raise ConfigError(
            f"model.backbone.non_local: {list(non_local)} applies to ResNet backbones only, not '{name}'; leave it out"
        )


def refuse_imagenet_download(cfg: BackboneConfig, instead: str) -> None:
    """Refuse ``pretrained: imagenet`` for a backbone that neither torchvision nor timm can download."""
    if cfg.pretrained == "imagenet":
        raise ConfigError(f"model.backbone.pretrained: 'imagenet' has no download for '{cfg.name}'; {instead}")


def set_stride_one(module: nn.Module) -> None:
    """Make a stride-2 conv or pooling layer stride 1 (for ``last_stride: 1``).

    A conv keeps its kernel and padding, so the output is the input size; a stride-2 average pool used only to
    downsample (ResNet-D shortcuts, ResNeSt's avd) becomes pointless and is dropped by the caller.
    """
    if isinstance(module, nn.Conv2d):
        module.stride = (1, 1)
    elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
        module.stride = 1
    else:
        raise TypeError(f"cannot change the stride of {type(module).__name__}")


def last_stride_to_one(root: nn.Module) -> None:
    """Set the last stride-2 layer under ``root`` (in registration order) to stride 1.

    For single-path downsampling blocks (MobileNet/EfficientNet stride-2 blocks have no shortcut) this halves the
    output stride exactly as ResNet's last-stride trick does.
    """
    last: nn.Module | None = None
    for module in root.modules():
        stride = getattr(module, "stride", None)
        if isinstance(module, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d)) and stride in (2, (2, 2)):
            last = module
    if last is None:
        raise ValueError(f"{type(root).__name__} has no stride-2 layer")
    set_stride_one(last)


def init_like_torchreid(root: nn.Module) -> None:
    """torchreid's initialisation of its OSNets and MobileNetV2: Kaiming-normal convs (fan-out), unit norms, small
    linears, zero biases (InstanceNorm keeps its own unit init)."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
