"""The accuracy-against-latency chart of a report: every variant a numbered point, one colour per model and one
marker per precision, the Pareto frontier (no other variant is both faster and more accurate) drawn and
highlighted, so that a model can be picked from the chart alone. The numbers beside the points are placed so that
no two texts overlap (checked against every text already drawn), and a key beside the axes names each number.
A variant whose latency was not measured on the backend its model is built for (the TensorRT-target INT8 model run
by ONNX Runtime) is drawn hollow and kept off the frontier. matplotlib is imported when a chart is drawn (Agg, no
display needed)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereid.atomic import atomic_write_figure

FIGURE_SIZE_IN = (12.8, 6.4)
DPI = 100
# Latencies spanning more than this factor are drawn on a log axis, where a 2 ms and a 200 ms model both stay
# readable.
LOG_SCALE_SPREAD = 10.0
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "D", "int8_cpu": "^"}
# Precisions whose model is built for one backend only: measured anywhere else, its latency is no deployment's.
PRECISION_TARGET_BACKEND = {"int8": "tensorrt"}
# The share of the figure's width the axes take; the key of numbered variants fills the rest on the right.
AXES_RECT = (0.07, 0.1, 0.56, 0.78)
KEY_RECT = (0.65, 0.1, 0.34, 0.78)
# Characters of a key entry's line (8-point text in the key's 435 pixels).
KEY_LABEL_CHARS = 60


@dataclass(frozen=True)
class ParetoPoint:
    label: str
    latency_ms: float
    mAP: float
    precision: str
    backend: str
    model: str = ""
    on_target: bool = True


def measured_on_target(precision: str, backend: str) -> bool:
    """Whether a latency of ``precision`` on ``backend`` is one a deployment gets: False for a model built for
    another backend (the TensorRT-target INT8 model run by ONNX Runtime, whose Q/DQ nodes it emulates)."""
    target = PRECISION_TARGET_BACKEND.get(precision)
    return target is None or backend == target


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


def plain_number(value: float) -> str:
    """A tick label without an exponent: 0.2, 1.5, 20, 300."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _minor_tick_label(value: float, _: Any = None) -> str:
    """Log-axis minor ticks: 2 and 5 of each decade labelled (plainly), the others left bare."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return plain_number(value) if round(mantissa, 6) in (2.0, 5.0) else ""


def _plain_scalar_formatter() -> Any:
    """Linear-axis ticks with as many decimals as their spacing needs, never an offset or an exponent."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    return formatter


def plot_pareto(points: Sequence[ParetoPoint], frontier: Sequence[bool], path: Path, title: str) -> str:
    """Draw ``points`` (mAP in [0, 1] against batch-1 latency) to the PNG ``path`` atomically; the x scale used
    ("linear" or "log")."""
    figure, scale = draw_pareto(points, frontier, title)
    atomic_write_figure(figure, path, DPI)
    return scale


def draw_pareto(points: Sequence[ParetoPoint], frontier: Sequence[bool], title: str) -> tuple[Any, str]:
    """The chart as an open matplotlib figure (drawn once, so every text has its final place) and its x scale;
    the caller closes it. Tests read the texts' boxes from it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator

    latencies = [point.latency_ms for point in points]
    log_scale = bool(points) and max(latencies) / max(min(latencies), 1e-9) > LOG_SCALE_SPREAD
    models = list(dict.fromkeys(point.model or point.label for point in points))
    colours = {model: plt.get_cmap("tab10")(index % 10) for index, model in enumerate(models)}

    figure = plt.figure(figsize=FIGURE_SIZE_IN, dpi=DPI)
    axes = figure.add_axes(AXES_RECT)
    key_axes = figure.add_axes(KEY_RECT)
    key_axes.set_axis_off()
    try:
        if log_scale:
            axes.set_xscale("log")
            axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
            axes.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            decades = math.log10(max(latencies) / max(min(latencies), 1e-9))
            # Over many decades the 2s and 5s would crowd the axis: only the powers of ten are labelled then.
            axes.xaxis.set_minor_formatter(FuncFormatter(_minor_tick_label if decades <= 3 else lambda *_: ""))
        else:
            axes.xaxis.set_major_formatter(_plain_scalar_formatter())
        axes.yaxis.set_major_formatter(_plain_scalar_formatter())
        # Clear of a y tick label at the axes' bottom corner.
        axes.tick_params(axis="x", which="both", pad=8)
        frontier_points = sorted(
            (point for point, on in zip(points, frontier, strict=True) if on), key=lambda point: point.latency_ms
        )
        if frontier_points:
            # Steps: from each frontier point, what one gets by accepting more latency.
            axes.step([point.latency_ms for point in frontier_points], [point.mAP * 100 for point in frontier_points],
                      where="post", color="crimson", linewidth=1.5, alpha=0.6, zorder=1)
        key_handles = []
        for number, (point, on) in enumerate(zip(points, frontier, strict=True), start=1):
            colour = colours[point.model or point.label]
            marker = PRECISION_MARKERS.get(point.precision, "o")
            face = colour if point.on_target else "white"
            axes.scatter(point.latency_ms, point.mAP * 100, s=110 if on else 60, zorder=3, marker=marker,
                         facecolors=face, edgecolors="crimson" if on else colour, linewidths=2.2 if on else 1.6)
            note = "" if point.on_target else " †"
            # Long names wrap inside the key's column instead of running off the figure.
            label = "\n     ".join(textwrap.wrap(f"{number}  {point.label}{note}", KEY_LABEL_CHARS))
            key_handles.append(Line2D([], [], marker=marker, linestyle="", markersize=7, markerfacecolor=face,
                                      markeredgecolor="crimson" if on else colour, markeredgewidth=1.5,
                                      label=label))
        axes.set_xlabel("latency at batch 1, p50 (ms" + (", log scale)" if log_scale else ")"))
        axes.set_ylabel("mAP (%)")
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.margins(x=0.12, y=0.15)
        corner = axes.text(0.01, 0.99, "better: up and left", transform=axes.transAxes, ha="left", va="top",
                           fontsize=8, color="dimgrey")
        if not points:
            axes.text(0.5, 0.5, "no variant has both an accuracy and a batch-1 latency", ha="center",
                      transform=axes.transAxes)

        kinds = [Line2D([], [], marker=marker, linestyle="", color="grey", label=precision.upper())
                 for precision, marker in PRECISION_MARKERS.items()
                 if any(point.precision == precision for point in points)]
        kinds.append(Line2D([], [], color="crimson", marker="o", markerfacecolor="none", markersize=8,
                            label="Pareto frontier"))
        if any(not point.on_target for point in points):
            kinds.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="grey",
                                label="hollow, †: latency not on the model's\ntarget backend; off the frontier"))
        key = key_axes.legend(handles=key_handles, loc="upper left", fontsize=8, frameon=False,
                              title="variants (colour: model, marker: precision)", title_fontsize=8,
                              alignment="left", borderaxespad=0)
        key_axes.add_artist(key)
        key_axes.legend(handles=kinds, loc="lower left", fontsize=8, frameon=True, framealpha=0.9,
                        borderaxespad=0, alignment="left")
        figure.canvas.draw()
        _place_numbers(figure, axes, points, [corner])
    except BaseException:
        plt.close(figure)
        raise
    return figure, "log" if log_scale else "linear"


def _place_numbers(figure: Any, axes: Any, points: Sequence[ParetoPoint], fixed: list[Any]) -> None:
    """Each point's number at the first of a ring of offsets, growing outwards, where its box meets no text drawn
    so far and no other point's marker; far from its point, a thin line leads back to it."""
    from matplotlib.text import Text

    renderer = figure.canvas.get_renderer()
    axes_box = axes.get_window_extent(renderer)
    positions = [axes.transData.transform((point.latency_ms, point.mAP * 100)) for point in points]
    # Every marker, as a small square in display pixels: numbers must not hide a point.
    marker_half = 6.0
    obstacles = [_box(x - marker_half, y - marker_half, x + marker_half, y + marker_half) for x, y in positions]
    taken = [artist.get_window_extent(renderer) for artist in fixed]
    offsets = [(dx * radius, dy * radius) for radius in (9, 16, 24, 34, 46, 60, 76, 96)
               for dx, dy in ((1, 0.6), (-1, 0.6), (1, -0.6), (-1, -0.6), (0, 1), (0, -1), (1, 0), (-1, 0))]
    for number, ((x, y), point) in enumerate(zip(positions, points, strict=True), start=1):
        chosen = None
        for dx, dy in offsets:
            text = axes.annotate(str(number), (point.latency_ms, point.mAP * 100), textcoords="offset points",
                                 xytext=(dx, dy), fontsize=9, fontweight="bold", ha="center", va="center")
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)
            own = obstacles[number - 1]
            clear = (_inside(box, axes_box)
                     and not any(box.overlaps(other) for other in taken)
                     and not any(box.overlaps(other) for index, other in enumerate(obstacles)
                                 if index != number - 1)
                     and not box.overlaps(own))
            if clear:
                chosen = text
                if math.hypot(dx, dy) > 20:
                    text.remove()
                    chosen = axes.annotate(str(number), (point.latency_ms, point.mAP * 100),
                                           textcoords="offset points", xytext=(dx, dy), fontsize=9,
                                           fontweight="bold", ha="center", va="center",
                                           arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6,
                                                       "shrinkA": 4, "shrinkB": 5})
                break
            text.remove()
        if chosen is None:
            # Nowhere free near the point (a very dense cluster): the key still lists the point by colour and
            # marker, so the number is left out rather than printed over another.
            continue
        # The text's own box: a leader line may cross other things, a number may not.
        chosen.update_positions(renderer)
        taken.append(Text.get_window_extent(chosen, renderer))


def _box(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(x0, y0, x1, y1)


def _inside(box: Any, outer: Any) -> bool:
    return bool(box.x0 >= outer.x0 and box.x1 <= outer.x1 and box.y0 >= outer.y0 and box.y1 <= outer.y1)
