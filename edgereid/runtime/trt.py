"""TensorRT in this process, as the runtime and the engine builder share it: importing it (one error that says where
to get it), its logger (one per process, TensorRT's rule), and whether a bundle's engine can run here
(:func:`check_engine_compatible`, the rule the runtime applies before deserialising an engine: a plan runs only on the
compute capability it was built for and, unless built version-compatible, only with the TensorRT version that built
it).

TensorRT is imported when a logger is asked for, never by importing this module.
"""

from __future__ import annotations

import collections
import importlib
import re
import warnings
from collections.abc import Mapping
from typing import Any

from edgereid.errors import DataError, EdgeReIDError

# Version-compatible plans also run on later major versions, but only on these pairs (NVIDIA's support matrix:
# TensorRT 8 plans on a TensorRT 10 runtime, TensorRT 10 plans on TensorRT 11); every other pair needs a rebuild.
_CROSS_MAJOR_COMPATIBLE = {(8, 10), (10, 11)}
# Version compatibility exists from TensorRT 8.6 on.
_FIRST_VERSION_COMPATIBLE = (8, 6)

_KEPT_MESSAGES = 20
_LOGGER: Any = None

TENSORRT_MISSING = (
    "TensorRT's Python package is not importable here ({reason}). On a Jetson it comes with JetPack: "
    "sudo apt install nvidia-jetpack (or python3-libnvinfer for the Python bindings alone; a virtual environment "
    "must be created with --system-site-packages to see them), then pip install 'edgereid[jetson-jp6]' (JetPack 6; "
    "jetson-jp7 on JetPack 7) for cuda-python; never pip install tensorrt there. On x86_64: pip install "
    "--extra-index-url https://pypi.nvidia.com 'edgereid[trt-cu12]' (an NVIDIA driver for CUDA 12; trt-cu13 for "
    "CUDA 13)"
)


class EngineCompatibilityError(DataError):
    """A bundle's engine was built for another GPU architecture or TensorRT version than this machine has."""


def require_tensorrt() -> None:
    """Raise the one error (shared by builder and runner) that says where to get TensorRT, where it cannot be
    imported; callers then ``import tensorrt as trt``, which mypy checks against tensorrt-stubs."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as error:
        raise EdgeReIDError(TENSORRT_MISSING.format(reason=f"{type(error).__name__}: {error}")) from None


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    if not numbers:
        raise DataError(f"{version!r} is not a TensorRT version")
    return tuple(int(number) for number in numbers)


def check_engine_compatible(
    engine: Mapping[str, Any], tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Raise EngineCompatibilityError when the engine of manifest entry ``engine`` cannot run with this TensorRT on
    this GPU; warn when it can but was built on another GPU model of the same architecture (TensorRT accepts
    that, its tactics were timed on the other model)."""
    built_version = str(engine["tensorrt_version"])
    built_on = f"TensorRT {built_version} on {engine['gpu']} (sm_{str(engine['compute_capability']).replace('.', '')})"
    here = f"TensorRT {tensorrt_version} on {gpu_name} (sm_{compute_capability.replace('.', '')})"
    rebuild = f"rebuild it here with: edgereid build BUNDLE --precision {engine.get('precision', 'PRECISION')}"
    file = engine.get("file", "the engine")
    if str(engine["compute_capability"]) != compute_capability:
        raise EngineCompatibilityError(
            f"{file} was built with {built_on}; this machine has {here}. An engine runs only on the GPU "
            f"architecture it was built for: {rebuild}"
        )
    built = _version_tuple(built_version)
    runtime = _version_tuple(tensorrt_version)
    if engine.get("options", {}).get("version_compatible"):
        later = runtime[:2] >= built[:2]
        same_or_allowed_major = runtime[0] == built[0] or (built[0], runtime[0]) in _CROSS_MAJOR_COMPATIBLE
        if built[:2] < _FIRST_VERSION_COMPATIBLE or not (later and same_or_allowed_major):
            raise EngineCompatibilityError(
                f"{file} was built version-compatible with {built_on}; this machine has {here}. A version-"
                f"compatible engine runs on the same or a later TensorRT of its major version (TensorRT 8 plans "
                f"also on 10, TensorRT 10 plans also on 11), never on an earlier one: {rebuild}"
            )
    elif runtime != built:
        raise EngineCompatibilityError(
            f"{file} was built with {built_on}; this machine has {here}. An engine runs only with the TensorRT "
            f"version that built it unless built with --version-compatible: {rebuild}"
        )
    if str(engine["gpu"]) != gpu_name:
        warnings.warn(
            f"{file} was built on {engine['gpu']} and runs here on {gpu_name} (same architecture, "
            f"sm_{compute_capability.replace('.', '')}); it works, but its kernels were chosen for the other GPU: "
            f"for best speed, {rebuild}",
            stacklevel=2,
        )


def tensorrt_logger() -> Any:
    """This process's TensorRT logger, which keeps the latest errors and warnings so that a failed parse, build or
    load can say why. One for the process: while any builder or runtime lives, TensorRT sends every message to
    the first logger it was given and ignores the others."""
    global _LOGGER
    if _LOGGER is None:
        require_tensorrt()
        import tensorrt as trt
        base: Any = trt.ILogger

        class KeepingLogger(base):
            def __init__(self) -> None:
                base.__init__(self)
                self.messages: collections.deque[str] = collections.deque(maxlen=_KEPT_MESSAGES)
                self.count = 0

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    self.messages.append(f"{severity.name}: {msg}")
                    self.count += 1

        _LOGGER = KeepingLogger()
    return _LOGGER


def tensorrt_messages(since: int) -> str:
    """The errors and warnings TensorRT logged after ``since`` (``tensorrt_logger().count`` taken before the call
    that failed), the last few, for an error message."""
    logger = tensorrt_logger()
    new = min(logger.count - since, len(logger.messages))
    messages = list(logger.messages)[len(logger.messages) - new :] if new > 0 else []
    return "; ".join(messages[-5:]) or "TensorRT logged no error"
