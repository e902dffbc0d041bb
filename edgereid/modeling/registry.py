"""The backbone registry: names → builders. Torch-free, so the recipe schema can list and check names.

Built-in backbones register themselves when `edgereid.modeling.backbones` is imported; `available_backbones()`
imports it on first use so a name check never sees a half-filled registry.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from edgereid.errors import ConfigError

BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])

_BACKBONES: dict[str, Callable[..., Any]] = {}
_BUILTINS_LOADED = False


def register_backbone(name: str) -> Callable[[BuilderT], BuilderT]:
    """Register ``builder(cfg: BackboneConfig) -> Backbone`` under ``name``; a name is registered once."""

    def decorator(builder: BuilderT) -> BuilderT:
        if name in _BACKBONES and _BACKBONES[name] is not builder:
            raise ValueError(f"backbone '{name}' is already registered (by {_BACKBONES[name].__module__})")
        _BACKBONES[name] = builder
        return builder

    return decorator


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("edgereid.modeling.backbones")


def available_backbones() -> list[str]:
    """The registered backbone names, sorted."""
    _load_builtins()
    return sorted(_BACKBONES)


def unknown_backbone_message(name: str) -> str:
    known = available_backbones()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown backbone '{name}'{hint} (available: {', '.join(known)})"


def get_backbone_builder(name: str) -> Callable[..., Any]:
    _load_builtins()
    if name not in _BACKBONES:
        raise ConfigError(f"model.backbone.name: {unknown_backbone_message(name)}")
    return _BACKBONES[name]
