"""A model's eval forward as an ONNX file: ``images`` (B×3×H×W float32, normalised) → ``embeddings`` (B×D float32),
simplified (onnxsim, onnxslim where onnxsim fails), checked, and written atomically."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgereid.atomic import atomic_write_bytes
from edgereid.errors import ExportError
from edgereid.export.common import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, check_opset
from edgereid.modeling.model import TestEmbedding

log = logging.getLogger(__name__)


def _simplify(model: Any) -> tuple[Any, str]:
    """``model`` simplified by onnxsim, or onnxslim where onnxsim fails; the tool's name, or 'none'."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if ok:
            return simplified, "onnxsim"
        log.warning("onnxsim could not validate its simplification; trying onnxslim")
    except Exception as error:  # noqa: BLE001  # any onnxsim failure falls back to onnxslim
        log.warning("onnxsim failed (%s: %s); trying onnxslim", type(error).__name__, error)
    try:
        import onnxslim

        return onnxslim.slim(model), "onnxslim"
    except Exception as error:  # noqa: BLE001
        log.warning("onnxslim failed too (%s: %s); keeping the unsimplified graph", type(error).__name__, error)
    return model, "none"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    simplify: bool = True,
) -> dict[str, Any]:
    """Write ``model``'s eval forward at ``input_size`` (height, width) to ``path`` and return what was done:
    ``{"opset", "simplifier", "dynamic_batch", "input", "output", "feature_dim"}``.

    The model is exported as it is (fold BatchNorm first with :func:`edgereid.export.fold_batchnorm`); it runs on
    the CPU in eval mode during the export and is put back afterwards.
    """
    import onnx

    check_opset(opset)
    path = Path(path)
    height, width = input_size
    was_training = model.training
    device = next(model.parameters()).device
    model.eval().cpu()
    wrapped = TestEmbedding(model)
    example = torch.zeros(2 if dynamic_batch else 1, 3, height, width)
    scratch = tempfile.TemporaryDirectory(prefix="edgereid-onnx-")
    raw_path = Path(scratch.name) / "raw.onnx"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values (shapes) taken as constants
            feature_dim = int(wrapped(example).shape[1])
            torch.onnx.export(
                wrapped,
                (example,),
                str(raw_path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(raw_path))
    except Exception as error:
        raise ExportError(f"torch.onnx.export failed for '{path}' ({type(error).__name__}: {error})") from error
    finally:
        model.train(was_training).to(device)
        scratch.cleanup()
    simplifier = "none"
    if simplify:
        proto, simplifier = _simplify(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:
        raise ExportError(f"the exported graph for '{path}' fails onnx.checker: {error}") from error
    atomic_write_bytes(proto.SerializeToString(), path)
    return {
        "opset": opset,
        "simplifier": simplifier,
        "dynamic_batch": dynamic_batch,
        "input": {"name": INPUT_NAME, "shape": ["batch" if dynamic_batch else 1, 3, height, width],
                  "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch" if dynamic_batch else 1, feature_dim], "dtype": "float32"},
        "feature_dim": feature_dim,
    }
