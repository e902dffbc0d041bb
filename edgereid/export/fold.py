"""The export's check of BatchNorm folding (:mod:`edgereid.modeling.fold`) on real images."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from edgereid.errors import ExportError

# What folding must keep: it is exact arithmetic, so anything below this on real images is a bug, not rounding.
FOLD_COSINE_MIN = 0.99999


@torch.no_grad()
def check_folding(model: nn.Module, folded: nn.Module, images: Tensor, source: str = "train") -> dict[str, Any]:
    """Compare the folded model with the original on ``images`` (normalised N×3×H×W, real images where there are
    any): the largest absolute difference and the smallest per-image cosine. Below :data:`FOLD_COSINE_MIN` it is
    an ExportError naming both figures, so a broken fold never reaches an ONNX file."""
    expected = model.eval()(images).float()
    actual = folded.eval()(images).float()
    cosine = torch.nn.functional.cosine_similarity(actual.double(), expected.double(), dim=1, eps=1e-12)
    cosine_min = float(cosine.min())
    max_abs_diff = float((actual - expected).abs().max())
    if cosine_min < FOLD_COSINE_MIN:
        raise ExportError(
            f"BatchNorm folding changed the model's output: cosine {cosine_min:.7f} < {FOLD_COSINE_MIN} (max abs "
            f"difference {max_abs_diff:.3g}) on {images.shape[0]} {source} images; the export stops"
        )
    return {"max_abs_diff": max_abs_diff, "cosine_min": cosine_min, "images": int(images.shape[0]), "source": source}
