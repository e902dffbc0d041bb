"""`edgereid eval CHECKPOINT --visualize DIR`: :func:`edgereid.training.evaluate_checkpoint`'s evaluation through
its own phases (``embed_splits``, ``query_gallery_distances``, ``report_for``), keeping the distance matrix so that the
ranked lists drawn are the ones the metrics were computed from. Needs torch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgereid.evaluation.distance import Metric
from edgereid.evaluation.features import query_gallery_distances
from edgereid.report.ranked import DEFAULT_TOP_K, SELECTIONS, draw_ranked_lists

if TYPE_CHECKING:
    from edgereid.data.selection import DataSelection
    from edgereid.training.evaluate import EvaluationReport


def evaluate_and_visualize(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    data: DataSelection | None = None,
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
    """``evaluate_checkpoint``'s report, and the index.html of the ranked lists drawn into ``out_dir``; ``data``
    chooses the data instead of the recipe's as for ``evaluate_checkpoint``."""
    from edgereid.training.evaluate import embed_splits, report_for

    started = time.perf_counter()
    embedded = embed_splits(checkpoint_path, data=data, flip=flip, device=device, batch_size=batch_size,
                            network=network)
    distances = query_gallery_distances(embedded.query_features, embedded.gallery_features, metric=metric, rerank=rerank,
                                  aqe=aqe)
    report = report_for(embedded, distances, metric=metric, rerank=rerank, aqe=aqe, started=started)
    options = ", ".join(name for name, on in (("flip", embedded.flip), ("rerank", rerank), ("aqe", aqe)) if on)
    title = (f"{embedded.checkpoint.path.name} ({embedded.network}) on {Path(embedded.data.root).name}"
             + (f", {options}" if options else ""))
    index = draw_ranked_lists(distances, embedded.query.records, embedded.gallery.records, out_dir, queries=queries,
                              count=count, top_k=top_k, title=title)
    return report, index
