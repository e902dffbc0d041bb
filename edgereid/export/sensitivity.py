"""Accuracy-aware INT8: hold the quantized model to an mAP budget against FP32, buying accuracy back layer by layer.

On by default for post-training INT8: `edgereid export --int8` holds every PTQ model to DEFAULT_MAX_MAP_DROP (0.5
mAP points) unless given ``--max-map-drop none``; a quantization-aware trained checkpoint skips it.

1. The INT8 model and the FP32 model are scored with ONNX Runtime (CPU) on a query/gallery protocol carved out of
   the TRAIN images the calibration did not use (never the test query/gallery, which stay unseen by every choice
   made here): up to ``heldout_images`` of them spread over identities and cameras, the first image of each
   (identity, camera) a query, the rest the gallery (the holdout protocol of :mod:`edgereid.data.holdout`).
   A candidate is accepted there only when its drop is within the budget less a margin (:func:`accepts`,
   HELDOUT_MARGIN_POINTS): the held-out identities were trained on, so the held-out drop under-reads the test drop.
2. When the drop is not accepted, each quantized layer's sensitivity is measured in isolation: the model is
   quantized with ONLY that layer in INT8 (the tensor ranges come from one calibration pass, cached, so each probe
   is a graph rewrite without calibration) and its embeddings of a few calibration images are compared with FP32's;
   the score is ``1 - mean cosine``. Isolation gives a clean ranking in one pass over the layers (about 20 for a
   ResNet-18, seconds each on a CPU) where leaving one layer out of the fully quantized model measures a small
   change on top of every other layer's error; the TensorRT target's ranking uses the same probes with its
   symmetric scheme.
3. The smallest number of the most sensitive layers kept in float that brings the drop within the accepted
   threshold is searched for (doubling, then bisecting: :func:`smallest_passing_count`), re-quantizing and
   re-scoring at each count tried; the manifest records the budget, margin and threshold, the layers, their scores,
   every count tried and the drop before and after. When even every layer in float is not accepted, the export
   fails (:class:`BudgetNotMetError`) naming the best drop reached and suggesting quantization-aware training by
   name (:func:`qat_suggestion`), a larger budget, or no search.
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
from edgereid.errors import ConfigError, DataError, ExportError
from edgereid.export.bias_correction import CORRECT_BY_DEFAULT, FULL_RANGE_LEVELS, BiasCorrection
from edgereid.export.calibration import CalibrationSet, select_heldout_records
from edgereid.export.common import (
    ORT_DISABLED_OPTIMIZERS,
    OUTPUT_NAME,
    _cosine,
    _session,
    embed_onnx,
)
from edgereid.export.equalize import EQUALIZE_BY_DEFAULT, equalize_activations
from edgereid.export.precision import INT8_PRECISIONS, TENSORRT_HIGH_PRECISION, OrtQuantizer, quantize_int8
from edgereid.recipes.schema import DataConfig

DEFAULT_HELDOUT_IMAGES = 1000
# About two images per camera of a Market-1501 identity: one query and one match per camera.
HELDOUT_IMAGES_PER_IDENTITY = 8
SENSITIVITY_IMAGES = 32
# Seeds the held-out draw apart from the calibration draw (which has already removed its own images).
_HELDOUT_SEED = 1
# The held-out protocol under-reads the test split's drop: its queries are identities the model was trained on,
# which it separates far better than unseen ones, so the same quantization error costs less mAP there. The search
# therefore accepts a candidate only when its held-out drop is within the budget minus this margin (mAP points): the
# 90th percentile of test drop - held-out drop over the CPU target's candidates on two synthetic quickstart models
# (0.34, rounded up; MARGIN_BASIS). No margin covers the TensorRT scheme's entropy-calibration losses there: the
# held-out protocol was saturated (HELDOUT_SATURATED_MAP).
HELDOUT_MARGIN_POINTS = 0.35
MARGIN_BASIS = "docs/BENCHMARKS.md, 'INT8 gate: held-out margin' (benchmarks/results/int8-gate-margin.json)"
# FP32 mAP on the held-out protocol from which it can no longer resolve INT8 losses: on the synthetic quickstart
# models FP32 scores 99.4-100 % on its train identities and the held-out drop read 0.00-0.34 points where the test
# split lost up to 2.7 (docs/BENCHMARKS.md). Such a record says so (``heldout_saturated``) and the export warns:
# the test-split verification is then the only judge.
HELDOUT_SATURATED_MAP = 0.99


def default_margin(max_map_drop: float) -> float:
    """The held-out margin for a budget: HELDOUT_MARGIN_POINTS, but never more than the budget itself (a budget of
    0 accepts no held-out drop at all, a smaller budget than the margin nothing above 0)."""
    return min(HELDOUT_MARGIN_POINTS, max_map_drop)


def heldout_threshold(max_map_drop: float, margin: float) -> float:
    """The largest held-out drop (mAP points) the search accepts: the budget less the margin."""
    return max_map_drop - margin


def accepts(drop_points: float, max_map_drop: float, margin: float) -> bool:
    """Whether the search accepts a candidate whose held-out drop is ``drop_points``: within the budget less the
    margin, not merely within the budget."""
    return drop_points <= heldout_threshold(max_map_drop, margin)


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
                "held-out query/gallery for the accuracy-aware search (no identity seen by two cameras); lower "
                "--calibration-images, or export plain post-training INT8 with --max-map-drop none"
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


class Int8Candidates:
    """Quantizations of one FP32 model for one INT8 precision, with any of its layers kept in float.

    Activation equalization (``equalize``; None: the precision's default, ``EQUALIZE_BY_DEFAULT``) is applied once
    into ``scratch``; the ONNX Runtime quantizer (the CPU target's, and the sensitivity probes' of both targets) is
    built on first use and keeps its calibrated tensor ranges, so re-quantizing with other layers in float costs no
    calibration on the CPU target (the TensorRT target re-runs modelopt's).
    """

    def __init__(
        self, precision: str, fp32_path: Path, calibration: CalibrationSet, scratch: Path, *, method: str,
        equalize: bool | None = None, correct_bias: bool | None = None,
    ) -> None:
        if precision not in INT8_PRECISIONS:
            raise ExportError(f"{precision!r} is not an INT8 precision; expected one of {', '.join(INT8_PRECISIONS)}")
        self.precision, self.fp32_path, self.calibration, self.scratch = precision, fp32_path, calibration, scratch
        self.method = method
        self.cpu = INT8_PRECISIONS[precision] == "cpu"
        self.source, self.equalization = fp32_path, None
        if EQUALIZE_BY_DEFAULT[precision] if equalize is None else equalize:
            self.source = scratch / "equalized.onnx"
            self.equalization = equalize_activations(fp32_path, self.source, calibration.images)
        self.bias_correction: BiasCorrection | None = None
        if CORRECT_BY_DEFAULT[precision] if correct_bias is None else correct_bias:
            if self.cpu:
                raise ConfigError(
                    "bias correction is for the TensorRT target (int8) only: ONNX Runtime's CPU scheme gained nothing "
                    "measurable from it (docs/BENCHMARKS.md, 'Bias correction'); drop --bias-correction for int8_cpu"
                )
            self.bias_correction = BiasCorrection(self.source, calibration.images, levels=FULL_RANGE_LEVELS)
        self._quantizer: OrtQuantizer | None = None

    def sensitivity_quantizer(self) -> OrtQuantizer:
        if self._quantizer is None:
            # The TensorRT target's layers are named as in the FP32 graph (modelopt's input): no preprocessing.
            self._quantizer = OrtQuantizer(self.source, self.calibration, self.scratch, method=self.method,
                                           symmetric=not self.cpu, preprocess=self.cpu)
        return self._quantizer

    def quantize(self, target: Path, exclude: Sequence[str] = ()) -> dict[str, Any]:
        """The model with every quantizable layer in INT8 but ``exclude`` written to ``target``."""
        if self.cpu:
            return self.sensitivity_quantizer().quantize(target, exclude=exclude)
        source = self.source
        if self.bias_correction is not None:
            # Layers kept in float keep their bias: they have no rounding error to correct.
            source = self.scratch / "bias-corrected.onnx"
            self.bias_correction.write(source, skip=exclude)
        return quantize_int8(source, target, self.calibration, method=self.method, exclude=exclude)

    def ranking(self) -> list[LayerSensitivity]:
        """Every quantizable layer scored alone in INT8, most sensitive first (:func:`layer_sensitivity`)."""
        return layer_sensitivity(self.sensitivity_quantizer(), self.fp32_path,
                                 self.calibration.images[:SENSITIVITY_IMAGES], self.scratch)

    def sensitivity_method(self) -> str:
        scheme = "ONNX Runtime CPU scheme" if self.cpu else "symmetric TensorRT scheme"
        return (f"each layer alone in INT8 ({scheme}), 1 - mean cosine to FP32 embeddings on "
                f"{min(SENSITIVITY_IMAGES, len(self.calibration.images))} calibration images")


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
    correct_bias: bool | None = None,
    heldout_images: int = DEFAULT_HELDOUT_IMAGES,
    margin: float | None = None,
    qat_hint: str | None = None,
) -> dict[str, Any]:
    """Quantize ``fp32_path`` to ``target`` for ``precision`` (``int8``: TensorRT, ``int8_cpu``: ONNX Runtime CPU).

    With ``equalize`` (None: the precision's default, ``EQUALIZE_BY_DEFAULT``) the activations between convolutions
    are rescaled first (:mod:`edgereid.export.equalize`; the same function) and the record goes into the entry under
    ``equalization``. With ``correct_bias`` (None: the precision's default, ``CORRECT_BY_DEFAULT``; TensorRT
    target only) each quantized convolution's bias is corrected for its weight rounding
    (:mod:`edgereid.export.bias_correction`), recorded under ``bias_correction``.

    With ``max_map_drop`` (mAP points; None: plain post-training quantization, no search) the accuracy-aware loop of
    this module's docstring runs, a candidate accepted on the held-out images only within ``max_map_drop`` minus
    ``margin`` (None: :func:`default_margin`), and its record goes into the returned manifest entry under
    ``accuracy``; an unmet budget is a :class:`BudgetNotMetError` (naming quantization-aware training: ``qat_hint``
    says how for this checkpoint) and ``target`` is removed.
    """
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-") as scratch_name:
        scratch = Path(scratch_name)
        candidates = Int8Candidates(precision, fp32_path, calibration, scratch, method=method, equalize=equalize,
                                    correct_bias=correct_bias)

        def quantize(exclude: Sequence[str]) -> dict[str, Any]:
            return candidates.quantize(target, exclude)

        correction = candidates.bias_correction
        entry = {**quantize(()), "equalization": candidates.equalization,
                 "bias_correction": correction.record() if correction is not None else None}
        # What an ONNX Runtime user outside edgereid must also turn off for the layers kept in float to stay float.
        entry["onnxruntime_disabled_optimizers"] = list(ORT_DISABLED_OPTIMIZERS)
        if max_map_drop is None:
            return {**entry, "accuracy": None}
        try:
            entry["accuracy"] = _fit_budget(
                quantize, candidates, target, train, data,
                max_map_drop=max_map_drop, margin=default_margin(max_map_drop) if margin is None else margin,
                flip=flip, heldout_images=heldout_images, qat_hint=qat_hint,
            )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        # The loop's last quantization (the layers it kept in float excluded) is the one left at ``target``.
        return entry


def _fit_budget(
    quantize: Callable[[Sequence[str]], dict[str, Any]],
    candidates: Int8Candidates,
    target: Path,
    train: Sequence[ImageRecord],
    data: DataConfig,
    *,
    max_map_drop: float,
    margin: float,
    flip: bool,
    heldout_images: int,
    qat_hint: str | None,
) -> dict[str, Any]:
    precision, fp32_path, calibration, scratch = (
        candidates.precision, candidates.fp32_path, candidates.calibration, candidates.scratch)
    threshold = heldout_threshold(max_map_drop, margin)
    scorer = HeldOutScorer(train, calibration, data, fp32_path, flip=flip, max_images=heldout_images)
    mAP, drop = scorer.drop_points(target)
    record: dict[str, Any] = {
        "max_mAP_drop_points": max_map_drop,
        "heldout_margin_points": margin,
        "heldout_threshold_points": threshold,
        "margin_basis": MARGIN_BASIS,
        "heldout": scorer.info(),
        "heldout_saturated": scorer.reference_mAP >= HELDOUT_SATURATED_MAP,
        "int8_mAP_before": mAP,
        "drop_points_before": drop,
        "int8_mAP_after": mAP,
        "drop_points_after": drop,
        "excluded_layers": [],
        "sensitivity_method": None,
    }
    if accepts(drop, max_map_drop, margin):
        return record
    ranking = candidates.ranking()
    record["sensitivity_method"] = candidates.sensitivity_method()
    # Every layer's score, most sensitive first: what the bundle's report charts (`edgereid verify --visualize`).
    record["ranking"] = [asdict(layer) for layer in ranking]
    steps: list[dict[str, Any]] = []
    kept_models = scratch / "kept"
    kept_models.mkdir()

    def within_budget(count: int) -> bool:
        quantize([layer.node for layer in ranking[:count]])
        mAP, drop = scorer.drop_points(target)
        steps.append({"layers_in_float": count, "drop_points": drop, "mAP": mAP})
        if accepts(drop, max_map_drop, margin):
            shutil.copyfile(target, kept_models / f"{count}.onnx")
            return True
        return False

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
    all_float = next((step["drop_points"] for step in steps if step["layers_in_float"] == len(ranking)), None)
    raise BudgetNotMetError(budget_failure_message(
        precision, drop_before=record["drop_points_before"], best_drop=best["drop_points"],
        best_layers=best["layers_in_float"], total_layers=len(ranking), max_map_drop=max_map_drop, margin=margin,
        qat_hint=qat_hint, all_float_drop=all_float,
    ))


class BudgetNotMetError(ExportError):
    """Post-training quantization cannot hold the mAP budget, even with layers kept in float."""


def budget_failure_message(
    precision: str, *, drop_before: float, best_drop: float, best_layers: int, total_layers: int,
    max_map_drop: float, margin: float, qat_hint: str | None = None, all_float_drop: float | None = None,
) -> str:
    """What a user reads when PTQ cannot meet the budget: the drops, then the ways forward, QAT first.
    ``all_float_drop``: the drop with every quantized layer in float, when the search got there — what is left
    then is not INT8's doing, and the user is told so."""
    threshold = heldout_threshold(max_map_drop, margin)
    not_int8 = ""
    if all_float_drop is not None and all_float_drop > threshold:
        around = (f"the {TENSORRT_HIGH_PRECISION.upper()} TensorRT computes around its INT8 layers, and "
                  if precision == "int8" else "")
        not_int8 = (f" With every layer in float it still loses {all_float_drop:.2f}: that is not INT8 but {around}"
                    "the noise of the held-out set: quantization-aware training needs no such search.")
    return (
        f"{precision}: post-training INT8 cannot meet the {max_map_drop:g}-point mAP budget (--max-map-drop): it "
        f"loses {drop_before:.2f} mAP points against FP32 on held-out train images, and keeping the most sensitive "
        f"layers in float reached at best {best_drop:.2f} (with {best_layers} of {total_layers} layers in float), "
        f"over the {threshold:.2f} the search accepts there (the budget less a {margin:.2f}-point margin, because "
        f"held-out train images under-read the test split's drop).{not_int8} Ways forward: "
        f"(1) quantization-aware training: {qat_hint or qat_suggestion(None, None)}, then export that run "
        "(its INT8 models carry what it learned, no layer in float); "
        "(2) a larger budget, which allows more loss and more float fallback: --max-map-drop 1.0; "
        "(3) --max-map-drop none exports plain PTQ without the search (the verification still judges it); "
        "or another --calibration-method / more --calibration-images"
    )


def qat_suggestion(checkpoint: str | Path | None, recipe_name: str | None, network: str | None = None) -> str:
    """How to train ``checkpoint`` quantization-aware: a recipe with a ``qat:`` section whose ``qat.init`` is it
    (and ``qat.network`` the ``network`` of a mutual checkpoint), naming the shipped ``qat_*`` recipe of
    ``recipe_name`` where there is one, else the shipped examples."""
    from edgereid.recipes import shipped_recipes

    init = str(checkpoint) if checkpoint is not None else "CHECKPOINT"
    settings = f"--set qat.init={init}" + (f" --set qat.network={network}" if network is not None else "")
    shipped = [name for name in shipped_recipes() if name.startswith("qat_")]
    examples = ", ".join(f"recipes/{name}.yaml" for name in shipped) or "recipes/qat_*.yaml"
    own = f"qat_{recipe_name}" if recipe_name is not None else None
    if own in shipped:
        return f"`edgereid train {own} {settings}` (a recipe with a `qat:` section whose `qat.init` is the checkpoint)"
    return (f"a recipe with a `qat:` section whose `qat.init` is {init}"
            + (f" and `qat.network` {network}" if network is not None else "")
            + f" (`_base_:` this checkpoint's recipe; shipped examples: {examples}), trained with `edgereid train`")


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
