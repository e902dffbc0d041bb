"""Where a reduced precision ranks differently from FP32 (`edgereid verify BUNDLE --visualize DIR`): for each
precision, the queries whose AP or Rank-1 changed most against the FP32 reference (ONNX Runtime CPU), their ranked
lists side by side; the distribution of per-query AP differences with the paired bootstrap interval of ΔmAP
(edgereid.evaluation.bootstrap) drawn on it; and, where the accuracy-aware INT8 export kept layers in float, the
sensitivity it measured for them. Torch-free, like verify_runtime, whose data loading it shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.bundle_format import ExportBundle, load_bundle
from edgereid.data.selection import DataSelection
from edgereid.evaluation.bootstrap import paired_bootstrap_delta
from edgereid.evaluation.distance import compute_distance
from edgereid.evaluation.rank import RankResult, evaluate_rank
from edgereid.report.ranked import (
    DEFAULT_TOP_K,
    draw_ranked_lists,
    draw_rows,
    index_page,
    ranked_lists,
    save_figure,
)

DPI = 100
HISTOGRAM_SIZE_IN = (8.0, 4.5)
SENSITIVITY_SIZE_IN = (10.0, 4.5)
SENSITIVITY_BARS = 24


def changed_queries(reference: RankResult, candidate: RankResult, reference_first: np.ndarray,
                    candidate_first: np.ndarray, count: int) -> list[int]:
    """The ``count`` valid queries whose AP changed most (a Rank-1 flip first), largest change first."""
    valid = np.flatnonzero(~np.isnan(reference.per_query_ap))
    change = np.abs(candidate.per_query_ap[valid] - reference.per_query_ap[valid])
    flipped = reference_first[valid] != candidate_first[valid]
    order = np.lexsort((-change, ~flipped))
    return [int(valid[index]) for index in order[:count] if change[index] > 0 or flipped[index]]


def plot_ap_differences(differences_points: np.ndarray, interval: Any, precision: str, path: Path) -> Path:
    """Histogram of per-query AP differences (points), the mean (ΔmAP) and its bootstrap interval drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=HISTOGRAM_SIZE_IN, dpi=DPI)
    try:
        spread = max(float(np.max(np.abs(differences_points))), 1e-3)
        axes.hist(differences_points, bins=np.linspace(-spread, spread, 41).tolist(), color="steelblue", alpha=0.8)
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.axvspan(interval.low_points, interval.high_points, color="crimson", alpha=0.2,
                     label=f"{interval.confidence:.0%} interval of ΔmAP [{interval.low_points:+.2f}, "
                           f"{interval.high_points:+.2f}]")
        axes.axvline(interval.delta_points, color="crimson", linewidth=1.5,
                     label=f"ΔmAP {interval.delta_points:+.2f} points (mean)")
        unchanged = int(np.count_nonzero(differences_points == 0))
        axes.set_title(f"{precision} − FP32: per-query AP difference over {interval.num_queries} queries "
                       f"({unchanged} unchanged)", fontsize=10)
        axes.set_xlabel("AP difference (points)")
        axes.set_ylabel("queries")
        axes.legend(fontsize=8, loc="upper left")
        figure.tight_layout()
    except BaseException:
        plt.close(figure)
        raise
    return save_figure(figure, path)


def plot_sensitivity(accuracy: dict[str, Any], precision: str, path: Path) -> Path | None:
    """The accuracy-aware INT8 search of the manifest (``models.<p>.accuracy``): each layer it kept in float with
    its measured sensitivity (1 − cosine to FP32 with that layer alone in INT8), and the held-out mAP drop at each
    number of layers in float it tried. None where the export recorded no search."""
    excluded = accuracy.get("excluded_layers") or []
    steps = accuracy.get("steps") or []
    if not excluded and not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (bars, drops) = plt.subplots(1, 2, figsize=SENSITIVITY_SIZE_IN, dpi=DPI,
                                         gridspec_kw={"width_ratios": [3, 2]})
    try:
        # Every layer the search scored (most sensitive first, the first SENSITIVITY_BARS), those kept in float in
        # orange; manifests written before the ranking was recorded have the kept layers only.
        kept = {layer["node"] for layer in excluded}
        scored = accuracy.get("ranking") or excluded
        shown = scored[:SENSITIVITY_BARS]
        names = [f"{rank}. {layer['node'][-28:]} ({layer['op_type']})" for rank, layer in enumerate(shown, start=1)]
        errors = [float(layer["embedding_error"]) for layer in shown]
        colours = ["darkorange" if layer["node"] in kept else "steelblue" for layer in shown]
        bars.barh(range(len(names)), errors, color=colours)
        bars.set_yticks(range(len(names)), names, fontsize=7)
        bars.invert_yaxis()
        total = excluded[0]["of"] if excluded else len(scored)
        bars.set_title(f"{precision}: {len(kept)} of {total} layers kept in float (orange), the most sensitive "
                       f"{len(shown)} shown", fontsize=10)
        bars.set_xlabel("sensitivity: 1 − mean cosine to FP32, layer alone in INT8")
        counts = [0, *(step["layers_in_float"] for step in steps)]
        drop_values = [accuracy.get("drop_points_before", math.nan), *(step["drop_points"] for step in steps)]
        order = np.argsort(counts, kind="stable")
        drops.plot(np.array(counts)[order], np.array(drop_values, dtype=float)[order], marker="o")
        threshold = accuracy.get("heldout_threshold_points")
        if threshold is not None:
            drops.axhline(threshold, color="crimson", linestyle="--", label=f"accepted drop ≤ {threshold:.2f}")
            drops.legend(fontsize=8)
        drops.set_xlabel("layers kept in float")
        drops.set_ylabel("held-out mAP drop (points)")
        drops.set_title("the search", fontsize=10)
        drops.grid(True, alpha=0.3)
        figure.tight_layout()
    except BaseException:
        plt.close(figure)
        raise
    return save_figure(figure, path)


def visualize_bundle(
    bundle: ExportBundle | str | Path,
    out_dir: str | Path,
    backend: str = "onnxruntime",
    precisions: Sequence[str] | None = None,
    *,
    data: DataSelection | None = None,
    max_images: int | None = None,
    count: int = 4,
    top_k: int = DEFAULT_TOP_K,
    **runner_options: Any,
) -> Path:
    """Draw the pictures of ``bundle``'s precisions on ``backend`` against the FP32 reference into ``out_dir``
    and an index.html linking them; the index's path. The data is chosen as ``verify_runtime`` chooses it: the
    bundle's recorded data set, ``data`` replacing its values, the first ``max_images`` query and gallery images."""
    from edgereid.runtime.embedder import Embedder
    from edgereid.runtime.runners import select_precisions
    from edgereid.runtime.verify import REFERENCE_BACKEND, REFERENCE_PRECISION, _decode, _load_split

    if not isinstance(bundle, ExportBundle):
        bundle = load_bundle(bundle)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = select_precisions(f"bundle '{bundle.path}'", bundle.precisions, backend, precisions, "verify")
    _, dataset_name, query_records, gallery_records = _load_split(bundle, data, max_images)
    query = _decode(query_records, bundle.input_size)
    gallery = _decode(gallery_records, bundle.input_size)
    images = np.concatenate([query.images, gallery.images])
    q_pids = np.array([record.pid for record in query.records])
    g_pids = np.array([record.pid for record in gallery.records])
    q_camids = np.array([record.camid for record in query.records])
    g_camids = np.array([record.camid for record in gallery.records])
    count_query = len(query.records)

    def distances_of(features: np.ndarray) -> np.ndarray:
        return np.asarray(compute_distance(features[:count_query], features[count_query:], "cosine"))

    with Embedder(bundle, REFERENCE_BACKEND, REFERENCE_PRECISION, providers=("cpu",)) as embedder:
        reference_distances = distances_of(embedder.embed_images(images))
    reference = evaluate_rank(reference_distances, q_pids, g_pids, q_camids, g_camids)
    labels = [f"id {record.pid} cam {record.camid}" for record in gallery.records]
    sections: list[tuple[str, str]] = []
    entries: list[tuple[str, str, str]] = []
    reference_index = draw_ranked_lists(
        reference_distances, query.records, gallery.records, out / "fp32-reference", count=count, top_k=top_k,
        query_images=list(query.images), gallery_images=list(gallery.images),
        title=f"{bundle.path.name} FP32 (ONNX Runtime CPU) on {dataset_name}",
    )
    sections.append(("ranked lists of the FP32 reference", f"{reference_index.parent.name}/{reference_index.name}"))
    reference_first = np.argsort(reference_distances, axis=1, kind="stable")[:, 0]
    for precision in wanted:
        if precision == REFERENCE_PRECISION and backend == REFERENCE_BACKEND:
            continue
        with Embedder(bundle, backend, precision, **runner_options) as embedder:
            distances = distances_of(embedder.embed_images(images))
        result = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
        interval = paired_bootstrap_delta(reference.per_query_ap, result.per_query_ap)
        valid = ~np.isnan(reference.per_query_ap)
        differences = (result.per_query_ap - reference.per_query_ap)[valid] * 100.0
        histogram = plot_ap_differences(differences, interval, f"{precision} on {backend}",
                                        out / f"ap-diff-{precision}.png")
        sections.append((f"{precision}: per-query AP differences against FP32", histogram.name))
        accuracy = (bundle.manifest["models"].get(precision) or {}).get("accuracy")
        if isinstance(accuracy, dict):
            chart = plot_sensitivity(accuracy, precision, out / f"sensitivity-{precision}.png")
            if chart is not None:
                sections.append((f"{precision}: layer sensitivity of the accuracy-aware INT8 export", chart.name))
        first = np.argsort(distances, axis=1, kind="stable")[:, 0]
        for row in changed_queries(reference, result, reference_first, first, count):
            pair = [
                ranked_lists(reference_distances, q_pids, g_pids, q_camids, g_camids, [row], top_k, reference)[0],
                ranked_lists(distances, q_pids, g_pids, q_camids, g_camids, [row], top_k, result)[0],
            ]
            record = query.records[row]
            figure = draw_rows([("FP32 (ONNX Runtime CPU)", pair[0]), (f"{precision} ({backend})", pair[1])],
                               query.images[row], list(gallery.images), labels,
                               f"{Path(record.path).name} (id {record.pid} cam {record.camid}): FP32 against "
                               f"{precision}")
            path = save_figure(figure, out / f"diff-{precision}-query-{row}.png")
            entries.append((f"{precision}, query {Path(record.path).name}", path.name,
                            f"AP {pair[0].ap:.1%} → {pair[1].ap:.1%}"))
    index = out / "index.html"
    from edgereid.atomic import atomic_write_text

    atomic_write_text(index, index_page(
        f"{bundle.path.name}: reduced precisions against FP32",
        f"{dataset_name}: {count_query} query / {len(gallery.records)} gallery images; reference FP32 mAP "
        f"{reference.mAP:.2%}; the queries whose AP or Rank-1 changed most, FP32 above, the precision below",
        entries, sections,
    ))
    return index
