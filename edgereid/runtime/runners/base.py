"""One interface over every inference backend, after Polygraphy's runners: a runner is built from a bundle and a
precision, is used as a context manager (``with create_runner(...) as runner``), and maps a batch of normalised
float32 N×3×H×W images to float32 N×D embeddings (not L2-normalised: the Embedder does that).

numpy only here: each backend imports its own library when it is created, so the runtime imports on a Jetson that
has TensorRT but no torch, or onnxruntime but no TensorRT.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edgereid.bundle_format import PRECISIONS, ExportBundle
from edgereid.errors import ConfigError
from edgereid.runtime.resource import Closable


@dataclass(frozen=True)
class InferenceTiming:
    """Seconds spent by the last ``infer`` call; ``host_to_device_s``/``device_to_host_s`` are None where the backend
    does not separate copies from compute (ONNX Runtime on CPU, say)."""

    total_s: float
    compute_s: float | None = None
    host_to_device_s: float | None = None
    device_to_host_s: float | None = None


class Runner(Closable, abc.ABC):
    """A loaded model of one bundle at one precision on one backend."""

    backend: ClassVar[str]
    # The precisions this backend can run; a bundle may hold more (the PyTorch reference runs FP32 only).
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, bundle: ExportBundle, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(
                f"the {self.backend} backend runs {', '.join(self.precisions)}; got precision {precision!r}"
            )
        if precision not in bundle.manifest["models"]:
            raise ConfigError(
                f"bundle '{bundle.path}' has no {precision!r} model; it has {', '.join(bundle.manifest['models'])}"
            )
        self.bundle = bundle
        self.precision = precision
        manifest = bundle.manifest
        self.input_name: str = manifest["input"]["name"]
        self.output_name: str = manifest["output"]["name"]
        self.input_size: tuple[int, int] = bundle.input_size
        self.feature_dim: int = int(manifest["output"]["feature_dim"])
        self.last_timing: InferenceTiming | None = None

    @property
    def backend_detail(self) -> str:
        """What exactly runs the model, for reports: library version, providers or device."""
        return self.backend

    @property
    def max_batch(self) -> int | None:
        """The largest batch this runner accepts (an engine's optimisation profile), None when unbounded."""
        return None

    @abc.abstractmethod
    def infer(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, D) embeddings of a float32 N×3×H×W batch, normalised as the manifest says."""

    def check_batch(self, images: np.ndarray) -> np.ndarray:
        """``images`` as a C-contiguous float32 batch of the bundle's input shape; anything else a ConfigError."""
        height, width = self.input_size
        if images.ndim != 4 or images.shape[1:] != (3, height, width):
            raise ConfigError(
                f"{self.backend} runner of '{self.bundle.path}' expects a float32 batch of shape (N, 3, {height}, "
                f"{width}), got {images.shape}"
            )
        if images.shape[0] == 0:
            raise ConfigError(f"{self.backend} runner of '{self.bundle.path}' got an empty batch")
        if self.max_batch is not None and images.shape[0] > self.max_batch:
            raise ConfigError(
                f"{self.backend} runner of '{self.bundle.path}' accepts at most {self.max_batch} images per batch "
                f"(its engine's profile), got {images.shape[0]}"
            )
        return np.ascontiguousarray(images, dtype=np.float32)
