"""``model.init_from``: a network starts from an edgereid checkpoint's weights (an imported FastReID, torchreid or
BoxMOT model, or an earlier run) instead of its random or ImageNet initialisation, to be fine-tuned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgereid.errors import ConfigError
from edgereid.modeling.config import ModelConfig
from edgereid.training.checkpoint import load_checkpoint
from edgereid.training.teaching import model_differences

# What a fine-tune may change of the checkpoint's model: the classifier is re-created for the new identities
# anyway, and the backbone's starting weights are the checkpoint's, whatever ``pretrained`` says.
_MAY_DIFFER: dict[str, Any] = {"classifier": True, "init_from": True, "backbone": {"pretrained": True}}


def _is_classifier(key: str) -> bool:
    return "classifier" in key.split(".")


def load_init_weights(model: nn.Module, config: ModelConfig, network: str = "model") -> str:
    """Put the weights of ``config.init_from``'s student network into ``model`` (built from ``config``); returns
    the line that says what was loaded and kept. The checkpoint's model must equal ``config`` but for the
    classifier, ``pretrained`` and ``init_from`` (else a ConfigError naming the keys that differ); the classifier's
    weights are kept where their shapes match (the same number of classes), else the fresh ones stay."""
    assert config.init_from is not None
    where = f"{network}.init_from '{config.init_from}'"
    source = load_checkpoint(Path(config.init_from))
    if source.quantization is not None:
        raise ConfigError(f"{where} is quantization-aware trained; give the FP32 checkpoint it came from")
    _, theirs, state = source.network(None)
    differing = model_differences(config, theirs, _MAY_DIFFER)
    if differing:
        raise ConfigError(
            f"{where} holds another model: {network}.{f', {network}.'.join(differing)} differ; give the recipe that "
            "checkpoint's model (`_base_:` its recipe, or the keys its checkpoint records)"
        )
    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    kept_fresh: list[str] = []
    for key, value in state.items():
        if key in target and _is_classifier(key) and tuple(target[key].shape) != tuple(value.shape):
            kept_fresh.append(key)
            continue
        loaded[key] = value
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    missing = [key for key in missing if key not in kept_fresh]
    if missing or unexpected:
        raise ConfigError(
            f"{where} does not fit the model: missing keys {list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}"
        )
    classifier = [key for key in loaded if _is_classifier(key)]
    if kept_fresh:
        counts = f"{source.num_classes} classes in the checkpoint, {_classes(target, kept_fresh)} here"
        what = f"the classifier re-created ({counts})"
    elif classifier:
        what = f"the classifier kept ({source.num_classes} classes)"
    else:
        what = "no classifier in the checkpoint"
    return (
        f"{network}: {len(loaded) - len(classifier)} tensors (backbone and head) from '{source.path}'; {what}"
    )


def _classes(state: dict[str, torch.Tensor], keys: list[str]) -> int:
    return int(state[keys[0]].shape[0]) if state[keys[0]].dim() else 0


__all__ = ["load_init_weights"]
