"""The export's lowest layer, which every export step imports and which imports nothing from ``edgereid.export``:
the ONNX names and opsets a bundle model has, the ONNX Runtime session every export step opens, row cosines, and
embedding uint8 images with a session. numpy here; onnxruntime is imported when a session is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.bundle_format import INPUT_NAME, ORT_DISABLED_OPTIMIZERS, OUTPUT_NAME
from edgereid.data.images import normalize_images
from edgereid.errors import ConfigError

# ONNX opsets: TensorRT 10.3 (JetPack 6.1/6.2) parses 9 to 20, which is also the newest torch's TorchScript exporter
# writes; TensorRT 8.6 (JetPack 6.0) parses up to 17. 13 is the first with per-channel QuantizeLinear.
MIN_OPSET = 13
MAX_OPSET = 20
DEFAULT_OPSET = MAX_OPSET


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"--opset {opset}: expected {MIN_OPSET} to {MAX_OPSET}; TensorRT 10.3 (JetPack 6.1/6.2) parses ONNX opsets "
            f"up to {MAX_OPSET}, TensorRT 8.6 (JetPack 6.0) up to 17, and per-channel INT8 needs {MIN_OPSET} or newer"
        )


def _session(path: Path) -> Any:
    """An ONNX Runtime CPU session of the model at ``path``, with edgereid's optimisations turned off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each row of ``a`` with the same row of ``b``, in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(denominator, 1e-12))


def embed_onnx(
    session: Any, images: np.ndarray, mean: Sequence[float], std: Sequence[float], *, batch_size: int = 64,
    flip: bool = False,
) -> np.ndarray:
    """float32 (N, D) embeddings of N×H×W×3 uint8 images from an ONNX Runtime session of a bundle model."""
    features = []
    for start in range(0, len(images), batch_size):
        inputs = normalize_images(images[start : start + batch_size], mean, std)
        output = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0].astype(np.float32)
        if flip:
            mirrored = np.ascontiguousarray(inputs[..., ::-1])
            output = (output + session.run([OUTPUT_NAME], {INPUT_NAME: mirrored})[0].astype(np.float32)) / 2
        features.append(output)
    return np.concatenate(features)
