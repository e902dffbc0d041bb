"""The accuracy-against-latency chart of a report: every variant a labelled point, the Pareto frontier (no other
variant is both faster and more accurate) drawn and highlighted, so that a model can be picked from the chart
alone. matplotlib is imported when a chart is drawn (Agg, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgereid.atomic import atomic_write_bytes

FIGURE_SIZE_IN = (10.0, 6.5)
DPI = 100
# Latencies spanning more than this factor are drawn on a log axis, where a 2 ms and a 200 ms model both stay
# readable.
LOG_SCALE_SPREAD = 10.0
_PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "D"}


@dataclass(frozen=True)
class ParetoPoint:
    label: str
    latency_ms: float
    mAP: float
    precision: str
    backend: str


def pareto_frontier(latencies: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the frontier of lower latency and higher score: no other point is at least
    as fast and at least as accurate and strictly better in one. Identical points are both on it."""
    if len(latencies) != len(scores):
        raise ValueError(f"{len(latencies)} latencies but {len(scores)} scores")
    order = sorted(range(len(latencies)), key=lambda index: (latencies[index], -scores[index]))
    on_frontier = [False] * len(latencies)
    best_score = float("-inf")
    best_latency = float("nan")
    # Sweeping from the fastest, a point is on the frontier when it beats every faster point's score (or repeats
    # the last frontier point exactly).
    for index in order:
        latency, score = latencies[index], scores[index]
        if score > best_score or (score == best_score and latency == best_latency):
            on_frontier[index] = True
            best_score, best_latency = score, latency
    return on_frontier


def plot_pareto(points: Sequence[ParetoPoint], frontier: Sequence[bool], path: Path, title: str) -> str:
    """Draw ``points`` (mAP in [0, 1] against batch-1 latency) to the PNG ``path`` atomically; the x scale used
    ("linear" or "log")."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    latencies = [point.latency_ms for point in points]
    log_scale = bool(points) and max(latencies) / max(min(latencies), 1e-9) > LOG_SCALE_SPREAD
    backends = sorted({point.backend for point in points})
    colours = {backend: plt.get_cmap("tab10")(index % 10) for index, backend in enumerate(backends)}

    figure, axes = plt.subplots(figsize=FIGURE_SIZE_IN, dpi=DPI)
    try:
        if log_scale:
            axes.set_xscale("log")
        frontier_points = sorted(
            (point for point, on in zip(points, frontier, strict=True) if on), key=lambda point: point.latency_ms
        )
        if frontier_points:
            # Steps: from each frontier point, what one gets by accepting more latency.
            axes.step([point.latency_ms for point in frontier_points], [point.mAP * 100 for point in frontier_points],
                      where="post", color="crimson", linewidth=1.5, alpha=0.7, zorder=1)
        for point, on in zip(points, frontier, strict=True):
            axes.scatter(point.latency_ms, point.mAP * 100, s=140 if on else 60, zorder=3,
                         marker=_PRECISION_MARKERS.get(point.precision, "o"), color=colours[point.backend],
                         edgecolors="crimson" if on else "none", linewidths=2 if on else 0)
            axes.annotate(point.label, (point.latency_ms, point.mAP * 100), textcoords="offset points",
                          xytext=(7, 5), fontsize=8, fontweight="bold" if on else "normal")
        axes.set_xlabel("latency at batch 1, p50 (ms" + (", log scale)" if log_scale else ")"))
        axes.set_ylabel("mAP (%)")
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.margins(x=0.15, y=0.12)
        handles = [Line2D([], [], marker="o", linestyle="", color=colours[backend], label=backend)
                   for backend in backends]
        handles += [Line2D([], [], marker=marker, linestyle="", color="grey", label=precision.upper())
                    for precision, marker in _PRECISION_MARKERS.items()
                    if any(point.precision == precision for point in points)]
        handles.append(Line2D([], [], color="crimson", marker="o", markerfacecolor="none", markersize=10,
                              label="Pareto frontier"))
        axes.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
        axes.text(0.01, 0.99, "better: up and left", transform=axes.transAxes, ha="left", va="top", fontsize=8,
                  color="dimgrey")
        if not points:
            axes.text(0.5, 0.5, "no variant has both an accuracy and a batch-1 latency", ha="center",
                      transform=axes.transAxes)
        buffer = io.BytesIO()
        # A fixed canvas (no tight bounding box) keeps every chart the same size in pixels.
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(figure)
    atomic_write_bytes(buffer.getvalue(), path)
    return "log" if log_scale else "linear"
