"""Backends behind one ``Runner`` interface, found by name in a registry (as timm's ``create_model``):
``create_runner(bundle, backend="onnxruntime", precision="fp32", **options)``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgereid.bundle_format import PRECISIONS, ExportBundle, load_bundle
from edgereid.errors import ConfigError
from edgereid.runtime.runners.base import InferenceTiming, Runner

R = TypeVar("R", bound=type[Runner])

_RUNNERS: dict[str, type[Runner]] = {}
# Modules that register a backend when imported; imported lazily so that a missing library only matters when its
# backend is asked for.
_BACKEND_MODULES = {
    "onnxruntime": "edgereid.runtime.runners.onnxruntime",
    "tensorrt": "edgereid.runtime.runners.tensorrt",
    "torch": "edgereid.runtime.runners.torch",
}
BACKENDS = tuple(_BACKEND_MODULES)


def register_runner(name: str) -> Callable[[R], R]:
    def register(cls: R) -> R:
        cls.backend = name
        _RUNNERS[name] = cls
        return cls

    return register


def runner_class(backend: str) -> type[Runner]:
    """The Runner class registered as ``backend`` (its module imported on first use); an unknown name is a
    ConfigError naming the choices."""
    if backend not in _BACKEND_MODULES:
        raise ConfigError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    importlib.import_module(_BACKEND_MODULES[backend])
    return _RUNNERS[backend]


def select_precisions(
    owner: str, available: Sequence[str], backend: str, precisions: Sequence[str] | None, purpose: str
) -> list[str]:
    """The precisions of ``owner`` (a bundle or engine, described for messages; it has ``available``) to run on
    ``backend`` for ``purpose`` ("verify", "benchmark"): all that the backend runs when none are asked for, else the
    ones asked for, in order without repeats, each known, present and runnable (a ConfigError names the first that
    is not)."""
    runs = runner_class(backend).precisions
    if not precisions:
        wanted = [precision for precision in available if precision in runs]
        if not wanted:
            raise ConfigError(
                f"the {backend} backend runs {', '.join(runs)}, and {owner} has {', '.join(available)}: nothing to "
                f"{purpose}"
            )
        return wanted
    if isinstance(precisions, str):
        precisions = [precisions]
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if precision not in available:
            raise ConfigError(f"{owner} has no {precision!r} model; it has {', '.join(available)}")
        if precision not in runs:
            raise ConfigError(f"the {backend} backend runs {', '.join(runs)}; got precision {precision!r}")
    return list(dict.fromkeys(precisions))


def create_runner(
    bundle: ExportBundle | str | Path, backend: str = "onnxruntime", precision: str = "fp32", **options: Any
) -> Runner:
    """A runner of ``bundle``'s ``precision`` model on ``backend``; unknown names are a ConfigError naming the
    choices, a backend whose library is missing an error saying how to install it."""
    cls = runner_class(backend)
    accepted = inspect.signature(cls).parameters
    takes_any = any(parameter.kind is parameter.VAR_KEYWORD for parameter in accepted.values())
    unknown = [] if takes_any else [name for name in options if name not in accepted]
    if unknown:
        known = [name for name in accepted if name not in ("bundle", "precision")]
        raise ConfigError(
            f"unknown option {', '.join(map(repr, unknown))} for the {backend} backend; it takes "
            f"{', '.join(known) or 'no options'}"
        )
    if not isinstance(bundle, ExportBundle):
        bundle = load_bundle(bundle)
    return cls(bundle, precision, **options)


__all__ = ["BACKENDS", "InferenceTiming", "Runner", "create_runner", "register_runner", "runner_class", "select_precisions"]
