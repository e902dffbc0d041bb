"""Does a bundle's model keep its accuracy on this backend? ``verify_runtime`` embeds the query/gallery of the
bundle's data set through the Embedder (exactly the preprocessing a deployment uses), scores every precision with
the Market protocol, and compares with the reference: the bundle's FP32 model on ONNX Runtime's CPU provider.

Torch-free: the data set comes from the root the bundle was verified on at export (or the one given), read by
the reader the layout is detected as.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.bundle_format import ExportBundle, load_bundle
from edgereid.data import ImageRecord, load_dataset, make_holdout
from edgereid.data.images import DecodedImages, decode_records
from edgereid.data.selection import DataSelection
from edgereid.errors import ConfigError, DataError
from edgereid.evaluation.features import evaluate_features
from edgereid.evaluation.rank import RankResult
from edgereid.evaluation.verification import delta_interval_fields, more_queries_remedy
from edgereid.runtime.embedder import Embedder
from edgereid.runtime.runners import select_precisions

VERIFY_KIND = "edgereid.verify"
VERIFY_SCHEMA_VERSION = 1
REFERENCE_BACKEND = "onnxruntime"
REFERENCE_PRECISION = "fp32"


def verify_runtime(
    bundle: ExportBundle | str | Path,
    backend: str = "onnxruntime",
    precisions: Sequence[str] | None = None,
    *,
    data: DataSelection | None = None,
    max_images: int | None = None,
    **runner_options: Any,
) -> dict[str, Any]:
    """Score ``precisions`` (default: every one the bundle has that ``backend`` runs) of ``bundle`` on ``backend``
    against the FP32 model on ONNX Runtime CPU: the ``edgereid.verify`` JSON document — the bundle and model id, the
    data set (root, query/gallery counts, fingerprint), ``reference`` (FP32 on ONNX Runtime CPU) and ``results``, one
    entry per precision (mAP, CMC, ΔmAP to the reference with its bootstrap interval, cosine, tolerance, passed).

    The data is the one recorded in the bundle's manifest, ``data`` (root, format, reader options, holdout)
    replacing its values by the rule of :class:`edgereid.data.selection.DataSelection`, as ``edgereid eval`` and
    the export's verification apply it to a recipe; ``max_images`` keeps the first N query and the first N gallery
    images. ``passed`` is |ΔmAP| within the precision's tolerance; each delta comes with its paired bootstrap
    interval over the queries and a warning where they are too few to judge the tolerance. Without onnxruntime
    there is no reference: deltas, intervals and ``passed`` are null (unknown), never 0.
    ``runner_options`` go to the backend.
    """
    if not isinstance(bundle, ExportBundle):
        bundle = load_bundle(bundle)
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be at least 1, got {max_images}")
    wanted = select_precisions(f"bundle '{bundle.path}'", bundle.precisions, backend, precisions, "verify")
    root, dataset_name, query_records, gallery_records = _load_split(bundle, data, max_images)
    query = _decode(query_records, bundle.input_size)
    gallery = _decode(gallery_records, bundle.input_size)
    manifest = bundle.manifest

    features: dict[str, np.ndarray] = {}
    elapsed: dict[str, float] = {}
    reference_features: np.ndarray | None = None
    backend_detail = backend
    for precision in wanted:
        with Embedder(bundle, backend, precision, **runner_options) as embedder:
            backend_detail = embedder.runner.backend_detail
            started = time.perf_counter()
            features[precision] = np.concatenate(
                [embedder.embed_images(query.images), embedder.embed_images(gallery.images)]
            )
            elapsed[precision] = time.perf_counter() - started
            if _is_reference(embedder):
                reference_features = features[precision]
    if reference_features is None:
        reference_features = _reference_features(bundle, np.concatenate([query.images, gallery.images]))
    reference_score = None if reference_features is None else _score(reference_features, query, gallery)
    remedy = more_queries_remedy(dataset_name, max_images)

    scores = {precision: _score(features[precision], query, gallery) for precision in wanted}
    results: dict[str, dict[str, Any]] = {}
    for precision, score in scores.items():
        tolerance = bundle.tolerance(precision)
        delta = None if reference_score is None else (score.mAP - reference_score.mAP) * 100.0
        cosine_min = None
        if reference_features is not None:
            # Both sides are L2-normalised: the row-wise dot product is the cosine.
            cosine_min = float(np.min(np.sum(features[precision] * reference_features, axis=1)))
        interval: dict[str, Any] = (
            {"delta_mAP_ci95_points": None, "evaluation_too_small": None, "evaluation_warning": None}
            if reference_score is None
            else delta_interval_fields(reference_score, score, tolerance, remedy)
        )
        results[precision] = {
            **_metrics(score),
            "delta_mAP_points": delta,
            **interval,
            "cosine_min": cosine_min,
            "tolerance_mAP_points": tolerance,
            "passed": None if delta is None or tolerance is None else bool(abs(delta) <= tolerance),
            "images_per_s": (len(query.records) + len(gallery.records)) / max(elapsed[precision], 1e-9),
        }
    return {
        "kind": VERIFY_KIND,
        "schema_version": VERIFY_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle.path.resolve()),
        "model_id": str(manifest["models"]["fp32"]["sha256"]),
        "recipe": manifest["recipe"],
        "network": manifest["network"],
        "backbone": manifest["backbone"],
        "input": list(bundle.input_size),
        "feature_dim": int(manifest["output"]["feature_dim"]),
        "params": _params(bundle),
        "dataset": {
            "root": str(root),
            "name": dataset_name,
            "num_query": len(query.records),
            "num_gallery": len(gallery.records),
            "fingerprint": dataset_fingerprint(root, query.records, gallery.records),
        },
        "num_query": len(query.records),
        # Which queries have a match depends on the labels only: the same for every precision.
        "num_valid_queries": scores[wanted[0]].num_valid_queries,
        "backend": backend,
        "backend_detail": backend_detail,
        "flip": bool(manifest["test"]["flip"]),
        "reference": None
        if reference_score is None
        else {"precision": REFERENCE_PRECISION, "backend": REFERENCE_BACKEND, **_metrics(reference_score, rank5=False)},
        "results": results,
        "passed": all(entry["passed"] is not False for entry in results.values()),
    }


def dataset_fingerprint(root: Path, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord]) -> str:
    """sha256 of the sorted (path relative to ``root``, pid, camid) of query and gallery: two verifications with
    the same fingerprint scored the very same protocol, wherever the data set was stored."""
    entries = sorted(
        (os.path.relpath(record.path, root), str(record.pid), int(record.camid)) for record in [*query, *gallery]
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _load_split(
    bundle: ExportBundle, selection: DataSelection | None, max_images: int | None
) -> tuple[Path, str, list[ImageRecord], list[ImageRecord]]:
    """The data set's root, name, and query and gallery records (the first ``max_images`` of each): the bundle's
    recorded data set with ``selection`` (root, format, reader options, holdout) replacing its values."""
    # The export records how the recipe reads its data set (manifest "data"); the layout is detected otherwise.
    recorded: dict[str, Any] = {"root": None, "format": None, "options": {}, "holdout": None,
                                **(bundle.manifest.get("data") or {})}
    selected = (selection or DataSelection()).apply(recorded)
    if not selected["root"]:
        raise ConfigError(
            f"bundle '{bundle.path}' records no data set (manifest data.root); give the query/gallery data set "
            "root (--data ROOT)"
        )
    root = Path(selected["root"])
    if not root.is_dir():
        raise DataError(f"data set root '{root}' does not exist or is not a directory")
    dataset = load_dataset(root, selected["format"], **(selected["options"] or {}))
    holdout = selected["holdout"]
    if holdout:
        dataset = make_holdout(
            dataset.train,
            num_test_ids=int(holdout["num_test_ids"]),
            seed=holdout.get("seed"),
            name=f"{dataset.name}-holdout",
            root=dataset.root,
        )
    if not dataset.query or not dataset.gallery:
        raise DataError(
            f"data set '{root}' ({dataset.name}) has no query or no gallery split to verify on; give a data set "
            "with a test protocol (--data ROOT)"
        )
    query = list(dataset.query)[:max_images]
    gallery = list(dataset.gallery)[:max_images]
    return root, dataset.name, query, gallery


def _decode(records: list[ImageRecord], size: tuple[int, int]) -> DecodedImages:
    decoded = decode_records(records, size)
    if not decoded.records:
        raise DataError(f"none of the {len(records)} images from '{records[0].path.parent}' could be decoded")
    return decoded


def _is_reference(embedder: Embedder) -> bool:
    runner = embedder.runner
    return (
        embedder.backend == REFERENCE_BACKEND
        and embedder.precision == REFERENCE_PRECISION
        and getattr(runner, "providers", None) == ["CPUExecutionProvider"]
    )


def _reference_features(bundle: ExportBundle, images: np.ndarray) -> np.ndarray | None:
    """The FP32 model's embeddings on ONNX Runtime CPU; None where onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    with Embedder(bundle, REFERENCE_BACKEND, REFERENCE_PRECISION, providers=("cpu",)) as embedder:
        return embedder.embed_images(images)


def _score(features: np.ndarray, query: DecodedImages, gallery: DecodedImages) -> RankResult:
    count = len(query.records)
    return evaluate_features(features[:count], features[count:], query.records, gallery.records)


def _metrics(score: RankResult, rank5: bool = True) -> dict[str, float]:
    metrics = {"mAP": float(score.mAP), "rank1": score.rank1, "mINP": float(score.mINP)}
    if rank5:
        # A gallery of fewer than five images has no rank 5: its CMC ends earlier and stays at its last value.
        metrics["rank5"] = float(score.cmc[min(5, len(score.cmc)) - 1])
    return metrics


def _params(bundle: ExportBundle) -> int | None:
    """Parameters of the exported FP32 graph (BN folded): the manifest's count, else counted from the ONNX
    initialisers when onnx is installed, else None."""
    if bundle.manifest.get("params") is not None:
        return int(bundle.manifest["params"])
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(bundle.model_path("fp32")), load_external_data=False)
    return int(sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer))
