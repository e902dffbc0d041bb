"""The ONNX Runtime backend: a bundle's ONNX model in an ``InferenceSession`` on the execution providers asked for
(CPU by default: the reference runtime for accuracy)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgereid.bundle_format import ORT_DISABLED_OPTIMIZERS, ExportBundle
from edgereid.errors import ConfigError, EdgeReIDError
from edgereid.runtime.runners import register_runner
from edgereid.runtime.runners.base import InferenceTiming, Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# ONNX Runtime's severity levels: 0 verbose … 3 error; warnings about unused initialisers and the like stay quiet.
_LOG_ERRORS_ONLY = 3


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise EdgeReIDError(
            "the onnxruntime backend needs onnxruntime, which is not installed here; install it with: "
            "pip install 'edgereid[export]' (or onnxruntime-gpu on a CUDA machine, never both)"
        ) from None
    return onnxruntime


def resolve_providers(providers: Sequence[str], available: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names for ``providers`` (short names such as "cpu" or full provider names), each one
    present in ``available``; anything else is a ConfigError listing what this onnxruntime has."""
    if isinstance(providers, str):
        providers = [providers]
    if not providers:
        raise ConfigError(f"providers must name at least one of {', '.join(PROVIDERS)}")
    resolved = []
    for name in providers:
        full = PROVIDERS.get(name.lower(), name)
        if full not in PROVIDERS.values() and full not in available:
            raise ConfigError(
                f"unknown ONNX Runtime provider {name!r}; expected one of {', '.join(PROVIDERS)} or a provider name"
            )
        if full not in available:
            raise ConfigError(
                f"ONNX Runtime provider {name!r} ({full}) is not in this onnxruntime build; it has "
                f"{', '.join(available)}"
            )
        if full not in resolved:
            resolved.append(full)
    return resolved


@register_runner("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """``providers`` in order of preference ("cpu", "cuda", "tensorrt"); ``threads`` sets intra-op threads (default:
    ONNX Runtime's, one per physical core)."""

    def __init__(
        self,
        bundle: ExportBundle,
        precision: str = "fp32",
        *,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
    ) -> None:
        super().__init__(bundle, precision)
        ort = _import_onnxruntime()
        wanted = resolve_providers(providers, ort.get_available_providers())
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        options = ort.SessionOptions()
        options.log_severity_level = _LOG_ERRORS_ONLY
        if threads is not None:
            options.intra_op_num_threads = threads
        path = bundle.model_path(precision)
        try:
            self._session: Any = ort.InferenceSession(str(path), options, providers=wanted,
                                                      disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
        except Exception as error:  # noqa: BLE001 - its pybind11 errors (Fail, InvalidGraph, …) derive from Exception
            raise EdgeReIDError(f"ONNX Runtime cannot load '{path}': {error}") from None
        self.providers: list[str] = list(self._session.get_providers())
        # Timing separates compute from copies only where there are none: everything on the CPU.
        self._cpu_only = self.providers == ["CPUExecutionProvider"]

    @property
    def backend_detail(self) -> str:
        return f"onnxruntime {_import_onnxruntime().__version__} ({', '.join(self.providers)})"

    def infer(self, images: np.ndarray) -> np.ndarray:
        batch = self.check_batch(images)
        if self._session is None:
            raise EdgeReIDError(f"the onnxruntime runner of '{self.bundle.path}' ({self.precision}) is closed")
        started = time.perf_counter()
        output = self._session.run([self.output_name], {self.input_name: batch})[0]
        elapsed = time.perf_counter() - started
        self.last_timing = InferenceTiming(total_s=elapsed, compute_s=elapsed if self._cpu_only else None)
        return np.asarray(output, dtype=np.float32)

    def close(self) -> None:
        # Dropping the session frees its memory arena.
        self._session = None
