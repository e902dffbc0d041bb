"""A training run's curves, ``curves.png``: every loss term and the learning rate against the iteration, and each
evaluation's mAP and Rank-1 (of every network of a mutual-learning run), read from the run's metrics.jsonl.

Training redraws it after each evaluation; ``edgereid report RUN_DIR`` draws it into the report. The module sits
below both (like the bundle and gallery formats): the trainer writes metrics.jsonl and the report reads it, and
neither stage imports the other. The file is replaced atomically, so a viewer never reads half a picture. matplotlib
is imported when a chart is drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgereid.atomic import atomic_write_figure
from edgereid.errors import DataError

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
FIGURE_SIZE_IN = (15.0, 4.5)
DPI = 100
# What the evaluation panel draws, per network (a peer network's keys carry "/NAME").
EVAL_KEYS = ("mAP", "rank1")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of a metrics.jsonl; a line cut short by a kill mid-write is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"'{path}' does not exist: is '{path.parent}' a training run directory?") from None
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "iteration" in entry:
            entries.append(entry)
    return entries


def plot_training_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw the curves of ``run`` (a run directory or its metrics.jsonl) to ``out`` (default: the run's
    curves.png), atomically; the path written."""
    run = Path(run)
    metrics = run / METRICS_FILE if run.is_dir() else run
    target = Path(out) if out is not None else metrics.parent / CURVES_FILE
    entries = read_metrics(metrics)
    figure = draw_training_curves(entries, title=f"training run {metrics.parent.name}")
    return atomic_write_figure(figure, target, DPI)


def draw_training_curves(entries: list[dict[str, Any]], title: str) -> Any:
    """The three panels (losses, learning rate, evaluations) as an open figure; the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train = [entry for entry in entries if entry.get("kind", "train") == "train"]
    evaluations = [entry for entry in entries if entry.get("kind") == "eval"]
    figure, (losses, rates, scores) = plt.subplots(1, 3, figsize=FIGURE_SIZE_IN, dpi=DPI)
    try:
        iterations = [entry["iteration"] for entry in train]
        loss_keys = [key for key in dict.fromkeys(key for entry in train for key in entry)
                     if key == "loss" or key.startswith("loss_")]
        for key in loss_keys:
            points = [(entry["iteration"], entry[key]) for entry in train if _number(entry.get(key))]
            if points:
                xs, ys = zip(*points, strict=True)
                losses.plot(xs, ys, label="total" if key == "loss" else key.removeprefix("loss_"),
                            linewidth=2.2 if key == "loss" else 1.2, marker="." if len(points) < 30 else None)
        losses.set_title("loss terms (training windows)", fontsize=10)
        rate_points = [(entry["iteration"], entry["lr"]) for entry in train if _number(entry.get("lr"))]
        if rate_points:
            xs, ys = zip(*rate_points, strict=True)
            rates.plot(xs, ys, color="tab:purple", marker="." if len(rate_points) < 30 else None)
            rates.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        rates.set_title("learning rate (first parameter group)", fontsize=10)
        networks = sorted({key.partition("/")[2] for entry in evaluations for key in entry if key.startswith("mAP")})
        for network in networks:
            suffix = f"/{network}" if network else ""
            for key, style in zip(EVAL_KEYS, ("-", "--"), strict=True):
                points = [(entry["iteration"], entry[key + suffix] * 100) for entry in evaluations
                          if _number(entry.get(key + suffix))]
                if points:
                    xs, ys = zip(*points, strict=True)
                    name = "Rank-1" if key == "rank1" else key
                    scores.plot(xs, ys, style, marker="o", label=f"{name} {network or 'student'}".strip())
        scores.set_title("evaluation (query/gallery, %)", fontsize=10)
        for axes, empty in ((losses, not iterations), (rates, not rate_points), (scores, not evaluations)):
            axes.set_xlabel("iteration")
            axes.grid(True, alpha=0.3)
            if empty:
                axes.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=axes.transAxes,
                          color="dimgrey")
            elif axes.get_legend_handles_labels()[0]:
                axes.legend(fontsize=7, loc="best")
        figure.suptitle(title, fontsize=11)
        figure.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
    except BaseException:
        plt.close(figure)
        raise
    return figure


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def update_run_curves(run_dir: Path, console: Any = None) -> Path | None:
    """Redraw ``run_dir``'s curves.png (training calls this after each evaluation); a picture that cannot be drawn
    is a printed warning, never the end of a training run."""
    try:
        return plot_training_curves(run_dir)
    except Exception as error:  # noqa: BLE001 - a chart must not stop training
        if console is not None:
            console.print(f"[yellow]warning:[/] {CURVES_FILE} not updated ({type(error).__name__}: {error})")
        return None
