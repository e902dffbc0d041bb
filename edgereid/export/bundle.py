"""Checkpoint → export bundle: a directory with the folded model as ONNX at each precision asked for and a
``manifest.json`` that tells a runtime everything it needs (input size, normalisation, feature size, files and
their sha256), written atomically: it is built in a temporary directory beside its destination and renamed into
place, so a failed export never leaves a half-written bundle.

``verify_bundle`` scores every model of a bundle with ONNX Runtime (the reference runtime for accuracy) on the
query/gallery of the recipe's data and compares with the PyTorch checkpoint: per-image cosine similarity of the
embeddings and mAP/rank-1, ΔmAP with its paired bootstrap interval over the queries.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgereid import __version__
from edgereid.atomic import atomic_write_bytes, publish_directory, remove_abandoned, staging_directory

# The bundle format (constants, ExportBundle, load_bundle, sha256_file) lives below export and runtime alike, in
# edgereid.bundle_format; the export's ONNX helpers in edgereid.export.common. Their names stay importable from here.
from edgereid.bundle_format import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    DEFAULT_MAX_MAP_DROP,
    INPUT_NAME,
    MANIFEST_NAME,
    MAP_TOLERANCE_POINTS,
    ORT_DISABLED_OPTIMIZERS,
    OUTPUT_NAME,
    PRECISIONS,
    ExportBundle,
    check_model_io,
    load_bundle,
    manifest_text,
    model_file_name,
    sha256_file,
    validate_manifest,
)
from edgereid.data.images import normalize_images
from edgereid.errors import ConfigError, DataError, EdgeReIDError
from edgereid.evaluation.verification import delta_interval_fields, more_queries_remedy
from edgereid.export.common import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    _cosine,
    _session,
    check_opset,
    embed_onnx,
)
from edgereid.export.options import ExportOptions, export_options
from edgereid.locking import exclusive

if TYPE_CHECKING:
    import torch

    from edgereid.data.selection import DataSelection
    from edgereid.export.calibration import CalibrationPolicy
    from edgereid.recipes.schema import DataConfig

logger = logging.getLogger(__name__)


def check_precisions(precisions: Sequence[str]) -> list[str]:
    """``precisions`` in order, without repeats; an unknown one is a ConfigError naming it."""
    if isinstance(precisions, str):
        precisions = [precisions]
    wanted: list[str] = []
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if precision not in wanted:
            wanted.append(precision)
    if not wanted:
        raise ConfigError(f"no precision to export; give at least one of {', '.join(PRECISIONS)}")
    if "fp32" not in wanted:
        wanted.insert(0, "fp32")  # the other precisions are converted from it, and it is the reference
    return wanted


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"export destination '{out_dir}' exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"export destination '{out_dir}' exists and is not empty; choose another --out or pass --overwrite"
        )


def _random_parity(model: torch.nn.Module, onnx_path: Path, input_size: tuple[int, int]) -> dict[str, float]:
    """ORT vs torch on a seeded random batch: the export's own check, which needs no data."""
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, *input_size, generator=generator)
    with torch.no_grad():
        expected = model(images).float().numpy()
    actual = _session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    return {
        "max_abs_diff": float(np.abs(actual - expected).max()),
        "cosine_min": float(_cosine(actual, expected).min()),
    }


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    **keywords: Any,
) -> ExportBundle:
    """Export the checkpoint (a .pt file or a run directory) to a bundle at ``out_dir``, as ``options`` say
    (:class:`~edgereid.export.options.ExportOptions`; ``keywords`` — its field names, as before it existed — replace
    its values). The options go into the manifest (``export_options``), so the bundle can be exported again alike.

    ``out_dir`` must not exist or be empty unless ``overwrite``. FP32 is always exported (the reference); with
    ``verify`` the bundle's models are scored by :func:`verify_bundle` and the results go into the manifest.
    INT8 (``int8``: TensorRT Q/DQ, ``int8_cpu``: ONNX Runtime CPU) is calibrated on one set drawn from the train
    split by ``calibration_policy`` (a shipped name or a YAML file; ``calibration_images``/``calibration_seed``
    override its count and seed), decoded once through the calibration cache in ``calibration_cache_dir``. Each
    post-training quantized INT8 model is held to ``max_map_drop`` (mAP points; by default DEFAULT_MAX_MAP_DROP,
    None: no search) against FP32 on held-out train images, accepted there only within the budget less
    ``heldout_margin`` (None: the default margin), keeping its most sensitive layers in float as needed
    (:mod:`edgereid.export.sensitivity`); the budget is also the INT8 verification tolerance recorded in the
    manifest. A quantization-aware trained checkpoint's INT8 models carry what it learned: no search. ``equalize``
    rescales the activations between convolutions before INT8 (:mod:`edgereid.export.equalize`); None leaves it to
    each target's default. ``bias_correction`` (TensorRT target; None: on) corrects each quantized convolution's
    bias for its weight rounding (:mod:`edgereid.export.bias_correction`).

    Exports into one destination take turns (an advisory lock beside it, ``edgereid.locking``); what a killed
    export left there (its staging directory) is removed first.
    """
    options = export_options(options, **keywords)
    wanted = check_precisions(options.precisions)
    check_opset(options.opset)
    policy = _calibration_policy(options, wanted)
    out_dir = Path(out_dir)
    with exclusive(out_dir, "export destination"):
        abandoned = remove_abandoned(out_dir)
        if abandoned:
            logger.warning("removed what an interrupted export left beside '%s': %s", out_dir,
                           ", ".join(path.name for path in abandoned))
        _check_destination(out_dir, overwrite)
        return _export_into(checkpoint_path, out_dir, options, wanted, policy)


def _calibration_policy(options: ExportOptions, wanted: list[str]) -> CalibrationPolicy | None:
    """The INT8 calibration set's policy, its count and seed checked; None when no INT8 is wanted."""
    if not any(precision.startswith("int8") for precision in wanted):
        return None
    from edgereid.export.calibration import MIN_CALIBRATION_IMAGES, load_calibration_policy
    from edgereid.export.precision import check_calibration_method

    check_calibration_method(options.calibration_method, [p for p in wanted if p.startswith("int8")])
    if options.calibration_images is not None and options.calibration_images < MIN_CALIBRATION_IMAGES:
        raise ConfigError(
            f"--calibration-images {options.calibration_images} is too few to estimate activation ranges; give at "
            f"least {MIN_CALIBRATION_IMAGES}"
        )
    if options.max_map_drop is not None and options.max_map_drop < 0:
        raise ConfigError(f"--max-map-drop must be at least 0 mAP points, got {options.max_map_drop}")
    if options.heldout_margin is not None and options.heldout_margin < 0:
        raise ConfigError(f"the held-out margin must be at least 0 mAP points, got {options.heldout_margin}")
    policy = load_calibration_policy(options.calibration_policy)
    if options.calibration_seed is not None:
        policy = policy.model_copy(update={"seed": options.calibration_seed})
    return policy


def _export_into(
    checkpoint_path: str | Path, out_dir: Path, options: ExportOptions, wanted: list[str],
    policy: CalibrationPolicy | None,
) -> ExportBundle:
    """The export itself, run while holding ``out_dir``'s lock: built in a staging directory, then published."""
    from edgereid.export.fold import check_folding
    from edgereid.export.onnx_export import export_onnx
    from edgereid.modeling.fold import fold_batchnorm_with_report
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.evaluate import build_model, build_reference_model

    network, opset, verify = options.network, options.opset, options.verify
    max_images, calibration_method = options.max_images, options.calibration_method
    calibration_images, calibration_cache_dir = options.calibration_images, options.calibration_cache_dir
    max_map_drop, equalize, heldout_margin = options.max_map_drop, options.equalize, options.heldout_margin
    checkpoint = load_checkpoint(checkpoint_path)
    network_name, model_config, _ = checkpoint.network(network)
    model = build_reference_model(checkpoint, "cpu", network)
    # A quantization-aware trained network: its INT8 models carry what it learned instead of a calibration.
    quantized = build_model(checkpoint, "cpu", network) if checkpoint.quantization is not None else None
    started = time.perf_counter()
    folded, fold_report = fold_batchnorm_with_report(model)
    fold_check = check_folding(model, folded, *_fold_check_images(checkpoint.recipe.data))
    data = checkpoint.recipe.data
    input_size = (int(data.size[0]), int(data.size[1]))
    built = staging_directory(out_dir)
    try:
        models: dict[str, dict[str, Any]] = {}
        fp32_path = built / model_file_name("fp32")
        graph = export_onnx(folded, fp32_path, input_size, opset=opset)
        parity = {"fp32": _random_parity(model, fp32_path, input_size)}
        timings = {"fp32_s": round(time.perf_counter() - started, 3)}
        extra: dict[str, dict[str, Any]] = {}
        calibration = None
        for precision in wanted[1:]:
            precision_started = time.perf_counter()
            target = built / model_file_name(precision)
            if precision == "fp16":
                from edgereid.export.precision import convert_fp16

                extra[precision] = convert_fp16(fp32_path, target)
            else:
                from edgereid.export.precision import prepare_calibration
                from edgereid.export.sensitivity import qat_suggestion, quantize_within_budget

                assert policy is not None
                if calibration is None:  # decoded once for both INT8 targets
                    calibration, train = prepare_calibration(
                        data, policy, num_images=calibration_images,
                        cache_dir=None if calibration_cache_dir is None else Path(calibration_cache_dir),
                    )
                if quantized is not None:
                    extra[precision] = _quantize_qat(precision, quantized, target, input_size, opset, calibration)
                else:
                    extra[precision] = quantize_within_budget(
                        precision, fp32_path, target, calibration, train, data, method=calibration_method,
                        max_map_drop=max_map_drop, flip=checkpoint.recipe.train.flip_test, equalize=equalize,
                        correct_bias=options.bias_correction if precision == "int8" else None,
                        margin=heldout_margin,
                        qat_hint=qat_suggestion(checkpoint.path, checkpoint.recipe.name, network),
                    )
                extra[precision]["tolerance_mAP_points"] = (
                    MAP_TOLERANCE_POINTS[precision] if max_map_drop is None else max_map_drop
                )
            parity[precision] = _random_parity(model, target, input_size)
            timings[f"{precision}_s"] = round(time.perf_counter() - precision_started, 3)
        for precision in wanted:
            file = built / model_file_name(precision)
            models[precision] = {
                "file": file.name,
                "sha256": sha256_file(file),
                "bytes": file.stat().st_size,
                **extra.get(precision, {}),
            }
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "edgereid_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "recipe": checkpoint.recipe.name,
            "network": network_name,
            "backbone": model_config.backbone.name,
            "ibn": model_config.backbone.ibn,
            "input": {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "color": "RGB",
                "height": input_size[0],
                "width": input_size[1],
                "scale": 1.0 / 255.0,
                "mean": list(data.mean),
                "std": list(data.std),
                "dynamic_batch": graph["dynamic_batch"],
            },
            "output": {"name": OUTPUT_NAME, "feature_dim": graph["feature_dim"], "normalized": False},
            "test": {"flip": checkpoint.recipe.train.flip_test, "metric": "cosine"},
            # How the recipe reads its data set, so a runtime without the checkpoint (or torch) can verify on it.
            "data": {
                "root": str(Path(data.root).resolve()),
                "format": data.format,
                "options": dict(data.options),
                "holdout": data.holdout.model_dump() if data.holdout is not None else None,
            },
            "opset": opset,
            "simplifier": graph["simplifier"],
            "folded": True,
            "fold": {"folded": len(fold_report.folded), "kept": fold_report.kept, "check": fold_check},
            "models": models,
            "parity_random_input": parity,
            "source": {
                "checkpoint": str(checkpoint.path.resolve()),
                "epoch": checkpoint.epoch,
                "iteration": checkpoint.iteration,
                "metrics": checkpoint.metrics,
            },
            "timings": timings,
            "verification": None,
            "export_options": options.model_copy(update={"precisions": wanted}).recorded(),
        }
        if quantized is not None and checkpoint.quantization is not None:
            # The FP32 (and FP16) models are the network QAT started from: the reference INT8 is verified against.
            manifest["quantization_aware"] = {
                "scheme": checkpoint.quantization.scheme,
                "fp32_from": checkpoint.quantization.init,
                "calibration": checkpoint.quantization.calibration,
            }
        if verify:
            manifest["verification"] = verify_bundle(
                ExportBundle(built, manifest), data=options.data_selection(), max_images=max_images, model=model
            )
        text = manifest_text(manifest)
        # What is written is what every reader will validate: a manifest the runtime would refuse is never published.
        validate_manifest(json.loads(text), built / MANIFEST_NAME)
        check_model_io(built, json.loads(text))
        atomic_write_bytes(text.encode(), built / MANIFEST_NAME)
        publish_directory(built, out_dir)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return ExportBundle(out_dir, manifest)


def _quantize_qat(
    precision: str, model: torch.nn.Module, target: Path, input_size: tuple[int, int], opset: int,
    calibration: Any,
) -> dict[str, Any]:
    """A quantization-aware trained network's INT8 model for ``precision``'s target, with its learned scales."""
    from edgereid.export.qat_export import quantize_qat_int8, quantize_qat_int8_cpu

    if precision == "int8":
        return quantize_qat_int8(model, target, input_size, opset=opset)
    return quantize_qat_int8_cpu(model, target, input_size, calibration, opset=opset)


FOLD_CHECK_IMAGES = 16


def _fold_check_images(data: DataConfig) -> tuple[torch.Tensor, str]:
    """Images to check folding on: the first train images of the recipe's data set where it can be read (folding
    errors hide in real activations' statistics), else a seeded random batch — named in the manifest."""
    import torch

    from edgereid.training.data import decode_split, prepare_dataset

    try:
        dataset = prepare_dataset(data, require_train=False)
        decoded = decode_split(sorted(dataset.train, key=lambda r: str(r.path))[:FOLD_CHECK_IMAGES], data, "fold-check")
    except EdgeReIDError:
        decoded = None
    if decoded is not None and len(decoded.images):
        return torch.from_numpy(normalize_images(decoded.images, data.mean, data.std)), "train"
    generator = torch.Generator().manual_seed(0)
    return torch.randn(FOLD_CHECK_IMAGES, 3, *data.size, generator=generator), "random"


def verify_bundle(
    bundle: ExportBundle | str | Path,
    *,
    data: DataSelection | None = None,
    max_images: int | None = None,
    checkpoint: str | Path | None = None,
    precisions: Sequence[str] | None = None,
    batch_size: int = 64,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Score the bundle's models with ONNX Runtime (CPU) against the PyTorch checkpoint it came from.

    The data is the recipe's query/gallery (``data`` replacing its root, format, reader options and holdout, as
    :func:`edgereid.training.evaluate.select_data` does for ``edgereid eval``; ``max_images`` keeps the first N of
    each split, for both sides alike). Flip averaging follows the recipe's ``train.flip_test``, as
    ``edgereid eval``. Returns ``{"torch": {mAP, rank1}, "precisions": {p: {mAP, rank1, delta_mAP_points,
    delta_mAP_ci95_points, evaluation_too_small, evaluation_warning, cosine_min, cosine_mean, max_abs_diff,
    images_per_s, tolerance_mAP_points, passed}}, "num_query", "num_valid_queries", "passed", ...}``; mAP and
    rank-1 as fractions, deltas in mAP points (percent). ``passed`` is |ΔmAP| within the tolerance; the interval
    (:func:`delta_interval_fields`) says whether the queries were enough to tell.
    """
    import torch

    from edgereid.data.transforms import EvalTransform
    from edgereid.evaluation.features import evaluate_features
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.data import decode_split, prepare_dataset
    from edgereid.training.evaluate import build_reference_model, select_data
    from edgereid.training.inference import embed_images

    if not isinstance(bundle, ExportBundle):
        bundle = load_bundle(bundle)
    manifest = bundle.manifest
    wanted = list(bundle.precisions) if precisions is None else [p for p in check_precisions(precisions)]
    source = load_checkpoint(checkpoint if checkpoint is not None else manifest["source"]["checkpoint"])
    if model is None:
        model = build_reference_model(source, "cpu", network=manifest["network"])
    selected = select_data(source.recipe.data, data)
    if tuple(selected.size) != bundle.input_size:
        raise DataError(
            f"the checkpoint's input size {tuple(selected.size)} differs from the bundle's {bundle.input_size}"
        )
    dataset = prepare_dataset(selected, require_train=False)
    if not dataset.query or not dataset.gallery:
        raise DataError(f"data set '{selected.root}' has no query or no gallery split to verify on")
    remedy = more_queries_remedy(dataset.name, max_images)
    query_records = list(dataset.query)[:max_images] if max_images else list(dataset.query)
    gallery_records = list(dataset.gallery)[:max_images] if max_images else list(dataset.gallery)
    query = decode_split(query_records, selected, "query-verify" if max_images else "query")
    gallery = decode_split(gallery_records, selected, "gallery-verify" if max_images else "gallery")
    flip = bool(manifest["test"]["flip"])
    mean, std = manifest["input"]["mean"], manifest["input"]["std"]
    transform = EvalTransform(selected.size, selected.mean, selected.std)
    device = torch.device("cpu")
    torch_query = embed_images(model, query.images, transform, device, batch_size=batch_size, flip=flip)
    torch_gallery = embed_images(model, gallery.images, transform, device, batch_size=batch_size, flip=flip)
    reference = evaluate_features(torch_query, torch_gallery, query.records, gallery.records)
    results: dict[str, Any] = {}
    for precision in wanted:
        session = _session(bundle.model_path(precision))
        started = time.perf_counter()
        ort_query = embed_onnx(session, query.images, mean, std, batch_size=batch_size, flip=flip)
        ort_gallery = embed_onnx(session, gallery.images, mean, std, batch_size=batch_size, flip=flip)
        elapsed = time.perf_counter() - started
        scored = evaluate_features(ort_query, ort_gallery, query.records, gallery.records)
        cosine = _cosine(np.concatenate([ort_query, ort_gallery]), np.concatenate([torch_query, torch_gallery]))
        delta = (scored.mAP - reference.mAP) * 100.0
        tolerance = bundle.tolerance(precision)
        results[precision] = {
            "mAP": float(scored.mAP),
            "rank1": float(scored.rank1),
            "delta_mAP_points": float(delta),
            **delta_interval_fields(reference, scored, tolerance, remedy),
            "delta_rank1_points": float((scored.rank1 - reference.rank1) * 100.0),
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "max_abs_diff": float(
                np.abs(np.concatenate([ort_query, ort_gallery]) - np.concatenate([torch_query, torch_gallery])).max()
            ),
            "images_per_s": float((len(query.images) + len(gallery.images)) * (2 if flip else 1) / elapsed),
            "tolerance_mAP_points": tolerance,
            "passed": None if tolerance is None else bool(abs(delta) <= tolerance),
        }
    return {
        "runtime": "onnxruntime CPUExecutionProvider",
        "data_root": str(selected.root),
        "num_query": len(query.records),
        "num_valid_queries": reference.num_valid_queries,
        "num_gallery": len(gallery.records),
        "flip": flip,
        "torch": {"mAP": float(reference.mAP), "rank1": float(reference.rank1)},
        "precisions": results,
        "passed": all(entry["passed"] is not False for entry in results.values()),
    }


__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "DEFAULT_MAX_MAP_DROP",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MANIFEST_NAME",
    "MAP_TOLERANCE_POINTS",
    "MAX_OPSET",
    "MIN_OPSET",
    "ORT_DISABLED_OPTIMIZERS",
    "OUTPUT_NAME",
    "PRECISIONS",
    "ExportBundle",
    "ExportOptions",
    "check_opset",
    "check_precisions",
    "delta_interval_fields",
    "embed_onnx",
    "export_checkpoint",
    "load_bundle",
    "model_file_name",
    "more_queries_remedy",
    "sha256_file",
    "verify_bundle",
]
