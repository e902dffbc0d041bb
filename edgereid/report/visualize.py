"""`edgereid eval CHECKPOINT --visualize DIR`: the evaluation of :func:`edgereid.training.evaluate_checkpoint`,
step by step the same (model, data, flip test, query expansion, re-ranking), keeping the distance matrix so that
the ranked lists drawn are the ones the metrics were computed from. Needs torch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgereid.errors import DataError
from edgereid.evaluation.distance import Metric, compute_distance
from edgereid.evaluation.query_expansion import average_query_expansion
from edgereid.evaluation.rank import evaluate_rank
from edgereid.evaluation.rerank import re_ranking
from edgereid.report.ranked import DEFAULT_TOP_K, SELECTIONS, draw_ranked_lists

if TYPE_CHECKING:
    from edgereid.training.evaluate import EvaluationReport


def feature_distances(
    query_features: np.ndarray, gallery_features: np.ndarray, *, metric: Metric = "cosine", rerank: bool = False,
    aqe: bool = False,
) -> np.ndarray:
    """The distance matrix :func:`edgereid.evaluation.features.evaluate_features` ranks by."""
    if aqe:
        query_features, gallery_features = average_query_expansion(query_features, gallery_features)
    distances = compute_distance(query_features, gallery_features, metric)
    if rerank:
        distances = re_ranking(
            distances,
            compute_distance(query_features, query_features, metric),
            compute_distance(gallery_features, gallery_features, metric),
        )
    return np.asarray(distances)


def evaluate_and_visualize(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    data_format: str | None = None,
    flip: bool | None = None,
    rerank: bool = False,
    aqe: bool = False,
    metric: Metric = "cosine",
    device: str = "auto",
    batch_size: int = 128,
    network: str | None = None,
    queries: Sequence[str | int] = SELECTIONS,
    count: int = 4,
    top_k: int = DEFAULT_TOP_K,
) -> tuple[EvaluationReport, Path]:
    """``evaluate_checkpoint``'s report, and the index.html of the ranked lists drawn into ``out_dir``."""
    from edgereid.data.transforms import EvalTransform
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.data import decode_split, prepare_dataset
    from edgereid.training.evaluate import EvaluationReport, build_model
    from edgereid.training.inference import embed_images
    from edgereid.training.trainer import resolve_device

    started = time.perf_counter()
    checkpoint = load_checkpoint(checkpoint_path)
    network_name, _, _ = checkpoint.network(network)
    data = checkpoint.recipe.data
    if data_root is not None:
        data = data.model_copy(update={"root": Path(data_root), "synthetic": None})
    if data_format is not None:
        data = data.model_copy(update={"format": data_format, "options": {}, "holdout": None})
    dataset = prepare_dataset(data)
    if not dataset.query or not dataset.gallery:
        raise DataError(
            f"data set '{data.root}' has no query or no gallery split to evaluate on (query: {len(dataset.query)}, "
            f"gallery: {len(dataset.gallery)} images)"
        )
    torch_device = resolve_device(device)
    model = build_model(checkpoint, torch_device, network_name)
    transform = EvalTransform(data.size, data.mean, data.std)
    use_flip = checkpoint.recipe.train.flip_test if flip is None else flip
    query = decode_split(dataset.query, data, "query")
    gallery = decode_split(dataset.gallery, data, "gallery")
    query_features = embed_images(model, query.images, transform, torch_device, batch_size=batch_size, flip=use_flip)
    gallery_features = embed_images(
        model, gallery.images, transform, torch_device, batch_size=batch_size, flip=use_flip
    )
    distances = feature_distances(query_features, gallery_features, metric=metric, rerank=rerank, aqe=aqe)
    records_q, records_g = query.records, gallery.records
    result = evaluate_rank(
        distances,
        np.array([record.pid for record in records_q]),
        np.array([record.pid for record in records_g]),
        np.array([record.camid for record in records_q]),
        np.array([record.camid for record in records_g]),
    )
    report = EvaluationReport(
        checkpoint=checkpoint.path, network=network_name, data_root=Path(data.root), num_query=len(records_q),
        num_gallery=len(records_g), flip=use_flip, rerank=rerank, aqe=aqe, metric=metric, result=result,
        elapsed_s=time.perf_counter() - started,
    )
    options = ", ".join(name for name, on in (("flip", use_flip), ("rerank", rerank), ("aqe", aqe)) if on)
    title = f"{checkpoint.path.name} ({network_name}) on {Path(data.root).name}" + (f", {options}" if options else "")
    index = draw_ranked_lists(distances, records_q, records_g, out_dir, queries=queries, count=count, top_k=top_k,
                              title=title)
    return report, index
