"""Images in, L2-normalised embeddings out: decoding, resizing and normalisation exactly as training evaluates
(``edgereid.data.images.decode_image`` then ``EvalTransform``), the flip test of the bundle's recipe, batching to
the backend's limit. numpy and Pillow only, so it runs on a device without torch."""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.bundle_format import ExportBundle, load_bundle
from edgereid.data.images import decode_image, normalize_images, resize_image
from edgereid.errors import ConfigError
from edgereid.runtime.resource import Closable
from edgereid.runtime.runners import Runner, create_runner


@dataclass(frozen=True)
class EmbedTiming:
    """Seconds of the last ``embed_*`` call: ``inference_s`` inside the runner, ``preprocess_s`` the rest
    (decoding, resizing, normalisation, flipping, L2 normalisation) as far as it was not hidden behind inference."""

    images: int
    total_s: float
    inference_s: float

    @property
    def preprocess_s(self) -> float:
        return max(self.total_s - self.inference_s, 0.0)


class Embedder(Closable):
    """Embeddings of a bundle's model on one backend and precision.

    ``flip`` (default: the bundle's ``test.flip``) averages the embeddings of each image and its mirror before
    L2 normalisation, as the recipe's evaluation does. ``batch_size`` is capped by the runner's ``max_batch``.
    ``decode_threads`` decode files in parallel (default: up to 8, one per CPU; Pillow releases the GIL).
    ``runner_options`` go to the backend (``providers``, ``threads``, ``device``, …).
    """

    def __init__(
        self,
        bundle: ExportBundle | str | Path,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        *,
        batch_size: int = 32,
        flip: bool | None = None,
        decode_threads: int | None = None,
        **runner_options: Any,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if decode_threads is not None and decode_threads < 1:
            raise ConfigError(f"decode_threads must be at least 1, got {decode_threads}")
        self.bundle = bundle if isinstance(bundle, ExportBundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        self.flip = bool(manifest["test"]["flip"]) if flip is None else flip
        self._mean: list[float] = list(manifest["input"]["mean"])
        self._std: list[float] = list(manifest["input"]["std"])
        self.runner: Runner = create_runner(self.bundle, backend, precision, **runner_options)
        limit = self.runner.max_batch
        self.batch_size = batch_size if limit is None else min(batch_size, limit)
        self._decode_threads = decode_threads or min(8, os.cpu_count() or 1)
        self.last_timing: EmbedTiming | None = None

    @property
    def feature_dim(self) -> int:
        return self.runner.feature_dim

    @property
    def input_size(self) -> tuple[int, int]:
        return self.bundle.input_size

    @property
    def model_id(self) -> str:
        """The FP32 model's sha256: embeddings of every precision of one model share it, another model's differ."""
        return str(self.bundle.manifest["models"]["fp32"]["sha256"])

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def backend(self) -> str:
        return self.runner.backend

    def embed_paths(self, paths: Sequence[str | Path]) -> np.ndarray:
        """float32 (N, D) L2-normalised embeddings of the image files at ``paths``, in order; a file that does not
        decode is a DataError naming it."""
        if isinstance(paths, (str, Path)):
            raise ConfigError(f"embed_paths takes a list of image paths, got the single path '{paths}'; wrap it in a list")
        paths = list(paths)
        if not paths:
            raise ConfigError("no images to embed: the list of paths is empty")
        return self._embed(self._decoded_batches(paths), len(paths))

    def embed_images(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """float32 (N, D) L2-normalised embeddings of uint8 H×W×3 RGB arrays of any size (resized as files are)."""
        if len(images) == 0:
            raise ConfigError("no images to embed: the list of images is empty")
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                shape = image.shape if isinstance(image, np.ndarray) else type(image).__name__
                dtype = image.dtype if isinstance(image, np.ndarray) else "-"
                raise ConfigError(
                    f"image {index} must be a uint8 H×W×3 RGB array, got dtype {dtype} and shape {shape} "
                    "(convert grayscale or RGBA images to RGB first)"
                )
        return self._embed(self._resized_batches(images), len(images))

    def close(self) -> None:
        self.runner.close()

    def _decoded_batches(self, paths: list[str | Path]) -> Generator[np.ndarray, None, None]:
        """uint8 batches at the input size; the next batch decodes in the pool while the current one is inferred."""
        size = self.input_size
        starts = range(0, len(paths), self.batch_size)
        with ThreadPoolExecutor(max_workers=self._decode_threads) as pool:

            def submit(start: int) -> list[Future[np.ndarray]]:
                return [pool.submit(decode_image, path, size) for path in paths[start : start + self.batch_size]]

            pending = submit(0)
            try:
                for start in starts:
                    batch = np.stack([future.result() for future in pending])
                    following = start + self.batch_size
                    pending = submit(following) if following < len(paths) else []
                    yield batch
            finally:
                for future in pending:
                    future.cancel()

    def _resized_batches(self, images: Sequence[np.ndarray] | np.ndarray) -> Generator[np.ndarray, None, None]:
        size = self.input_size
        for start in range(0, len(images), self.batch_size):
            yield np.stack([resize_image(image, size) for image in images[start : start + self.batch_size]])

    def _embed(self, batches: Generator[np.ndarray, None, None], count: int) -> np.ndarray:
        started = time.perf_counter()
        inference_s = 0.0
        features = np.empty((count, self.feature_dim), dtype=np.float32)
        row = 0
        # closing(): a failed batch stops the decoding of the next one at once, not whenever the generator is freed.
        with closing(batches):
            for batch in batches:
                inputs = normalize_images(batch, self._mean, self._std)
                output = self.runner.infer(inputs)
                inference_s += self._last_inference_s()
                if self.flip:
                    mirrored = np.ascontiguousarray(inputs[..., ::-1])
                    output = (output + self.runner.infer(mirrored)) / np.float32(2.0)
                    inference_s += self._last_inference_s()
                features[row : row + len(batch)] = output
                row += len(batch)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features /= np.maximum(norms, np.float32(1e-12))
        self.last_timing = EmbedTiming(count, time.perf_counter() - started, inference_s)
        return features

    def _last_inference_s(self) -> float:
        timing = self.runner.last_timing
        return 0.0 if timing is None else timing.total_s
