"""Accuracy-aware INT8: hold the quantized model to an mAP budget against FP32, buying accuracy back layer by layer.

1. The INT8 model and the FP32 model are scored with ONNX Runtime (CPU) on a query/gallery protocol carved out of
   the TRAIN images the calibration did not use (never the test query/gallery, which stay unseen by every choice
   made here): up to ``heldout_images`` of them spread over identities and cameras, the first image of each
   (identity, camera) a query, the rest the gallery (the holdout protocol of :mod:`edgereid.data.holdout`).
2. When the mAP drop exceeds the budget, each quantized layer's sensitivity is measured in isolation: the model is
   quantized with ONLY that layer in INT8 (the tensor ranges come from one calibration pass, cached, so each probe
   is a graph rewrite without calibration) and its embeddings of a few calibration images are compared with FP32's;
   the score is ``1 - mean cosine``. Isolation gives a clean ranking in one pass over the layers (about 20 for a
   ResNet-18, seconds each on a CPU) where leaving one layer out of the fully quantized model measures a small
   change on top of every other layer's error; the TensorRT target's ranking uses the same probes with its
   symmetric scheme.
3. The smallest number of the most sensitive layers kept in float that brings the drop within budget is searched
   for (doubling, then bisecting: :func:`smallest_passing_count`), re-quantizing and re-scoring at each count tried;
   the manifest records the layers, their scores, every count tried and the drop before and after. When even every
   layer in float cannot meet the budget, the export fails naming the best drop reached.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.data.holdout import split_first_per_key
from edgereid.data.records import ImageRecord
from edgereid.errors import DataError, ExportError
from edgereid.export.bundle import (
    ORT_DISABLED_OPTIMIZERS,
    OUTPUT_NAME,
    _cosine,
    _session,
    embed_onnx,
)
from edgereid.export.calibration import CalibrationSet, select_heldout_records
from edgereid.export.equalize import EQUALIZE_BY_DEFAULT, equalize_activations
from edgereid.export.precision import INT8_PRECISIONS, OrtQuantizer, quantize_int8
from edgereid.recipes.schema import DataConfig

DEFAULT_HELDOUT_IMAGES = 1000
# About two images per camera of a Market-1501 identity: one query and one match per camera.
HELDOUT_IMAGES_PER_IDENTITY = 8
SENSITIVITY_IMAGES = 32
# Seeds the held-out draw apart from the calibration draw (which has already removed its own images).
_HELDOUT_SEED = 1


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    embedding_error: float  # 1 - mean cosine vs FP32 with only this layer in INT8


class HeldOutScorer:
    """mAP of bundle models on a held-out protocol from the train images that calibration did not use."""

    def __init__(
        self,
        train: Sequence[ImageRecord],
        calibration: CalibrationSet,
        data: DataConfig,
        fp32_path: Path,
        *,
        flip: bool,
        max_images: int = DEFAULT_HELDOUT_IMAGES,
    ) -> None:
        from edgereid.training.data import decode_split

        used = set(calibration.paths)
        remaining = [record for record in train if str(record.path) not in used]
        chosen = select_heldout_records(remaining, max_images, _HELDOUT_SEED, HELDOUT_IMAGES_PER_IDENTITY)
        query, gallery = split_first_per_key(chosen, lambda record: (record.pid, record.camid))
        # A query counts only with a match of its identity from another camera in the gallery (Market protocol).
        matchable = {(record.pid, record.camid) for record in gallery}
        query = [r for r in query if any(pid == r.pid and cam != r.camid for pid, cam in matchable)]
        if not query:
            raise DataError(
                f"'{data.root}': the {len(remaining)} train images outside the calibration set do not form a "
                "held-out query/gallery (no identity seen by two cameras); lower --calibration-images"
            )
        self.query = decode_split(query, data, "int8-heldout-query")
        self.gallery = decode_split(gallery, data, "int8-heldout-gallery")
        self.mean, self.std, self.flip = data.mean, data.std, flip
        self.reference_mAP = self.score(fp32_path)

    def score(self, model_path: Path) -> float:
        from edgereid.evaluation.features import evaluate_features

        session = _session(model_path)
        query = embed_onnx(session, self.query.images, self.mean, self.std, flip=self.flip)
        gallery = embed_onnx(session, self.gallery.images, self.mean, self.std, flip=self.flip)
        return float(evaluate_features(query, gallery, self.query.records, self.gallery.records).mAP)

    def drop_points(self, model_path: Path) -> tuple[float, float]:
        """(mAP, drop in mAP points against FP32; positive = INT8 is worse)."""
        scored = self.score(model_path)
        return scored, (self.reference_mAP - scored) * 100.0

    def info(self) -> dict[str, Any]:
        return {
            "split": "train (images not used for calibration)",
            "num_query": len(self.query.records),
            "num_gallery": len(self.gallery.records),
            "flip": self.flip,
            "fp32_mAP": self.reference_mAP,
        }


def layer_sensitivity(
    quantizer: OrtQuantizer, fp32_path: Path, images: np.ndarray, scratch: Path
) -> list[LayerSensitivity]:
    """Every candidate layer of ``quantizer`` scored alone in INT8 on ``images``, most sensitive first."""
    reference = _session(fp32_path).run([OUTPUT_NAME], {quantizer.input_name: images})[0]
    probe = scratch / "probe.onnx"
    scores = []
    for node, op_type in quantizer.candidates.items():
        quantizer.quantize(probe, only=[node])
        output = _session(probe).run([OUTPUT_NAME], {quantizer.input_name: images})[0]
        scores.append(LayerSensitivity(node, op_type, float(1.0 - _cosine(output, reference).mean())))
    return sorted(scores, key=lambda score: score.embedding_error, reverse=True)


def quantize_within_budget(
    precision: str,
    fp32_path: Path,
    target: Path,
    calibration: CalibrationSet,
    train: Sequence[ImageRecord],
    data: DataConfig,
    *,
    method: str,
    max_map_drop: float | None,
    flip: bool,
    equalize: bool | None = None,
    heldout_images: int = DEFAULT_HELDOUT_IMAGES,
) -> dict[str, Any]:
    """Quantize ``fp32_path`` to ``target`` for ``precision`` (``int8``: TensorRT, ``int8_cpu``: ONNX Runtime CPU).

    With ``equalize`` (None: the precision's default, ``EQUALIZE_BY_DEFAULT``) the activations between convolutions
    are rescaled first (:mod:`edgereid.export.equalize`; the same function) and the record goes into the entry under
    ``equalization``.

    With ``max_map_drop`` (mAP points) the accuracy-aware loop of this module's docstring runs and its record goes
    into the returned manifest entry under ``accuracy``; an unmet budget is an ExportError and ``target`` is
    removed.
    """
    if precision not in INT8_PRECISIONS:
        raise ExportError(f"{precision!r} is not an INT8 precision; expected one of {', '.join(INT8_PRECISIONS)}")
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-") as scratch_name:
        scratch = Path(scratch_name)
        cpu = INT8_PRECISIONS[precision] == "cpu"
        quantizer: OrtQuantizer | None = None
        source, equalization = fp32_path, None
        if EQUALIZE_BY_DEFAULT[precision] if equalize is None else equalize:
            source = scratch / "equalized.onnx"
            equalization = equalize_activations(fp32_path, source, calibration.images)

        def sensitivity_quantizer() -> OrtQuantizer:
            nonlocal quantizer
            if quantizer is None:
                # The TensorRT target's layers are named as in the FP32 graph (modelopt's input): no preprocessing.
                quantizer = OrtQuantizer(source, calibration, scratch, method=method, symmetric=not cpu,
                                         preprocess=cpu)
            return quantizer

        def quantize(exclude: Sequence[str]) -> dict[str, Any]:
            if cpu:
                return sensitivity_quantizer().quantize(target, exclude=exclude)
            return quantize_int8(source, target, calibration, method=method, exclude=exclude)

        entry = {**quantize(()), "equalization": equalization}
        # What an ONNX Runtime user outside edgereid must also turn off for the layers kept in float to stay float.
        entry["onnxruntime_disabled_optimizers"] = list(ORT_DISABLED_OPTIMIZERS)
        if max_map_drop is None:
            return {**entry, "accuracy": None}
        try:
            entry["accuracy"] = _fit_budget(
                quantize, sensitivity_quantizer, fp32_path, target, calibration, train, data, scratch,
                max_map_drop=max_map_drop, flip=flip, heldout_images=heldout_images, precision=precision,
            )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        # The loop's last quantization (the layers it kept in float excluded) is the one left at ``target``.
        return entry


def _fit_budget(
    quantize: Callable[[Sequence[str]], dict[str, Any]],
    sensitivity_quantizer: Callable[[], OrtQuantizer],
    fp32_path: Path,
    target: Path,
    calibration: CalibrationSet,
    train: Sequence[ImageRecord],
    data: DataConfig,
    scratch: Path,
    *,
    max_map_drop: float,
    flip: bool,
    heldout_images: int,
    precision: str,
) -> dict[str, Any]:
    scorer = HeldOutScorer(train, calibration, data, fp32_path, flip=flip, max_images=heldout_images)
    mAP, drop = scorer.drop_points(target)
    record: dict[str, Any] = {
        "max_mAP_drop_points": max_map_drop,
        "heldout": scorer.info(),
        "int8_mAP_before": mAP,
        "drop_points_before": drop,
        "int8_mAP_after": mAP,
        "drop_points_after": drop,
        "excluded_layers": [],
        "sensitivity_method": None,
    }
    if drop <= max_map_drop:
        return record
    ranking = layer_sensitivity(
        sensitivity_quantizer(), fp32_path, calibration.images[:SENSITIVITY_IMAGES], scratch
    )
    record["sensitivity_method"] = (
        f"each layer alone in INT8 ({'ONNX Runtime CPU scheme' if precision == 'int8_cpu' else 'symmetric TensorRT scheme'}), "
        f"1 - mean cosine to FP32 embeddings on {min(SENSITIVITY_IMAGES, len(calibration.images))} calibration images"
    )
    steps: list[dict[str, Any]] = []
    kept_models = scratch / "kept"
    kept_models.mkdir()

    def within_budget(count: int) -> bool:
        quantize([layer.node for layer in ranking[:count]])
        mAP, drop = scorer.drop_points(target)
        steps.append({"layers_in_float": count, "drop_points": drop, "mAP": mAP})
        if drop <= max_map_drop:
            shutil.copyfile(target, kept_models / f"{count}.onnx")
        return drop <= max_map_drop

    count = smallest_passing_count(len(ranking), within_budget)
    if count is not None:
        chosen = next(step for step in steps if step["layers_in_float"] == count)
        # The search may have quantized other counts after this one: put the chosen model back at ``target``.
        shutil.copyfile(kept_models / f"{count}.onnx", target)
        kept = ranking[:count]
        record.update(
            int8_mAP_after=chosen["mAP"],
            drop_points_after=chosen["drop_points"],
            steps=steps,
            excluded_layers=[
                {**asdict(layer), "rank": rank + 1, "of": len(ranking),
                 "why": f"the {_ordinal(rank + 1)} most sensitive of {len(ranking)} quantized layers"}
                for rank, layer in enumerate(kept)
            ],
        )
        return record
    fully_quantized = {"layers_in_float": 0, "drop_points": record["drop_points_before"]}
    best = min([fully_quantized, *steps], key=lambda step: step["drop_points"])
    raise ExportError(
        f"{precision}: the INT8 model loses {record['drop_points_before']:.2f} mAP points against FP32 on the "
        f"held-out train images, over the budget of {max_map_drop} (--max-map-drop); keeping the most sensitive "
        f"layers in float reached at best {best['drop_points']:.2f} points (with {best['layers_in_float']} of "
        f"{len(ranking)} layers in float). "
        "Raise --max-map-drop, try another --calibration-method or more --calibration-images"
    )


def smallest_passing_count(total: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest count in 1..``total`` for which ``passes`` holds, assuming that keeping more of the most
    sensitive layers in float never hurts: doubling from 1 until one passes, then bisecting between the last
    failure and that pass — about 2·log2(answer) quantizations instead of one per layer, which matters for the
    TensorRT target, whose every quantization re-runs modelopt's calibration. None when not even ``total`` passes.
    """
    if total < 1:
        return None
    failing, count = 0, 1
    while not passes(count):
        if count == total:
            return None
        failing, count = count, min(2 * count, total)
    passing = count
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return passing


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
