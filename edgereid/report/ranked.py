"""Ranked lists, the picture ReID engineers judge a model by (FastReID's ``visualize_result``, torchreid's
``visrank``): a query image and its top-k gallery images, each marked as the evaluation counts it.

The marks follow :func:`edgereid.evaluation.rank.evaluate_rank` exactly: the gallery is ordered by a stable sort of
the query's distances (ties by gallery index), an image of the query's identity from the query's own camera is junk
(ignored by the metrics, drawn but marked), one of its identity from another camera is correct, any other identity
wrong. Each mark is a colour and a shape and letter (✓ solid frame, ✗ dashed frame, J dotted frame), so a list reads
in grayscale too. matplotlib draws, Pillow reads and resizes the images.
"""

from __future__ import annotations

import html
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.atomic import atomic_write_figure, atomic_write_text
from edgereid.errors import ConfigError, DataError
from edgereid.evaluation.rank import RankResult, evaluate_rank

CORRECT, WRONG, JUNK = "correct", "wrong", "junk"
MARK_STYLE = {
    # colour, frame line style, symbol
    CORRECT: ("#1a9850", "solid", "✓"),
    WRONG: ("#d73027", "dashed", "✗"),
    JUNK: ("#7f7f7f", "dotted", "J"),
}
TILE_IN = (1.3, 2.6)  # width, height of one image's cell, in inches
QUERY_CAPTION_CHARS = 22  # what fits over one tile at the caption's font size
TITLE_IN = 0.4  # the band above the lists that holds the picture's title
DPI = 100
DEFAULT_TOP_K = 10
SELECTIONS = ("worst", "best", "random")


@dataclass(frozen=True)
class RankedList:
    """One query's top-k: gallery indices in rank order, their marks, distances, and the query's AP (NaN where
    the query has no match from another camera, as evaluate_rank skips it)."""

    query: int
    gallery: np.ndarray
    marks: tuple[str, ...]
    distances: np.ndarray
    ap: float


def ranked_lists(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    queries: Sequence[int],
    top_k: int = DEFAULT_TOP_K,
    result: RankResult | None = None,
) -> list[RankedList]:
    """The top-``top_k`` of each of ``queries`` (row indices), marked as evaluate_rank counts them; ``result``
    (evaluate_rank of the same inputs) saves computing it again for the APs."""
    distances = np.asarray(distmat)
    if result is None:
        result = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    lists = []
    for query in queries:
        if not 0 <= query < distances.shape[0]:
            raise ConfigError(f"query {query} is outside the {distances.shape[0]} queries")
        order = np.argsort(distances[query], kind="stable")[:top_k]
        same = g_pids[order] == q_pids[query]
        junk = same & (g_camids[order] == q_camids[query])
        marks = tuple(JUNK if is_junk else CORRECT if is_same else WRONG
                      for is_same, is_junk in zip(same, junk, strict=True))
        lists.append(RankedList(int(query), order, marks, distances[query, order],
                                float(result.per_query_ap[query])))
    return lists


def select_queries(per_query_ap: np.ndarray, how: str, count: int, seed: int = 0) -> list[int]:
    """``count`` query rows among those with a match: the lowest AP ("worst"), the highest ("best"), or drawn at
    random ("random", reproducible by ``seed``). Ties keep query order."""
    valid = np.flatnonzero(~np.isnan(per_query_ap))
    if how == "worst":
        chosen = valid[np.argsort(per_query_ap[valid], kind="stable")[:count]]
    elif how == "best":
        chosen = valid[np.argsort(-per_query_ap[valid], kind="stable")[:count]]
    elif how == "random":
        chosen = np.sort(np.random.default_rng(seed).choice(valid, size=min(count, valid.size), replace=False))
    else:
        raise ConfigError(f"query selection {how!r} is not one of {', '.join(SELECTIONS)}")
    return [int(index) for index in chosen]


def _tile(image: np.ndarray | str | Path, size: tuple[int, int]) -> np.ndarray:
    """An image (uint8 HxWx3 array or a file) as an RGB array of ``size`` (height, width), via Pillow."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        picture = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    else:
        with Image.open(image) as opened:
            picture = opened.convert("RGB")
    return np.asarray(picture.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def draw_rows(
    rows: Sequence[tuple[str, RankedList]],
    query_image: np.ndarray | str | Path,
    gallery_images: Sequence[np.ndarray | str | Path],
    gallery_labels: Sequence[str],
    title: str,
) -> Any:
    """One figure of one or more ranked lists of the same query (one row each: a caption and a list): the query
    at the left, then the top-k, each framed and captioned by its mark. The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    top_k = max(len(ranked.gallery) for _, ranked in rows)
    tile = (128, 64)
    height = TILE_IN[1] * len(rows) + TITLE_IN
    figure, axes = plt.subplots(len(rows), top_k + 1, figsize=(TILE_IN[0] * (top_k + 1), height), dpi=DPI,
                                squeeze=False)
    try:
        for row_axes, (caption, ranked) in zip(axes, rows, strict=True):
            query_axes = row_axes[0]
            query_axes.imshow(_tile(query_image, tile))
            ap = "no match" if np.isnan(ranked.ap) else f"AP {ranked.ap:.1%}"
            # A long file name wraps within its tile instead of running off the picture's edge.
            wrapped = "\n".join(textwrap.wrap(caption, QUERY_CAPTION_CHARS))
            query_axes.set_title(f"{wrapped}\nquery, {ap}", fontsize=7)
            _frame(query_axes, "black", "solid", 2.0)
            for rank, cell in enumerate(row_axes[1:]):
                if rank >= len(ranked.gallery):
                    cell.set_axis_off()
                    continue
                index = int(ranked.gallery[rank])
                mark = ranked.marks[rank]
                colour, style, symbol = MARK_STYLE[mark]
                cell.imshow(_tile(gallery_images[index], tile))
                _frame(cell, colour, style, 4.0)
                cell.set_title(f"{rank + 1} {symbol} {mark}\n{gallery_labels[index]}\nd={ranked.distances[rank]:.3f}",
                               fontsize=6.5, color=colour)
        figure.suptitle(title, fontsize=9, y=1 - 0.12 / height, va="top")
        figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - (TITLE_IN + 0.5) / height,
                               wspace=0.15, hspace=0.6)
    except BaseException:
        plt.close(figure)
        raise
    return figure


def _frame(axes: Any, colour: str, style: str, width: float) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linestyle(style)
        spine.set_linewidth(width)


def save_figure(figure: Any, path: Path) -> Path:
    """The figure to PNG at ``path`` atomically, and closed."""
    return atomic_write_figure(figure, path, DPI)


def figure_pixels(top_k: int, rows: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a ranked-list picture of ``rows`` lists of ``top_k`` images."""
    return round(TILE_IN[0] * (top_k + 1) * DPI), round((TILE_IN[1] * rows + TITLE_IN) * DPI)


def draw_ranked_lists(
    distmat: np.ndarray,
    query_records: Sequence[Any],
    gallery_records: Sequence[Any],
    out_dir: str | Path,
    *,
    queries: Sequence[str | int] = SELECTIONS,
    count: int = 4,
    top_k: int = DEFAULT_TOP_K,
    query_images: Sequence[np.ndarray | str | Path] | None = None,
    gallery_images: Sequence[np.ndarray | str | Path] | None = None,
    title: str = "",
    seed: int = 0,
) -> Path:
    """Draw the ranked lists of ``queries`` — "worst", "best", "random" (``count`` queries each) or query row
    indices — to ``out_dir/query-<row>.png``, and ``out_dir/index.html`` listing them; the index's path.

    Records carry ``path``, ``pid`` and ``camid`` (ImageRecord); the images are read from their paths unless
    ``query_images``/``gallery_images`` give them (uint8 HxWx3 arrays).
    """
    distances = np.asarray(distmat)
    if distances.shape != (len(query_records), len(gallery_records)):
        raise DataError(f"distmat has shape {distances.shape}; expected ({len(query_records)}, "
                        f"{len(gallery_records)}) for the query and gallery records")
    q_pids = np.array([record.pid for record in query_records])
    g_pids = np.array([record.pid for record in gallery_records])
    q_camids = np.array([record.camid for record in query_records])
    g_camids = np.array([record.camid for record in gallery_records])
    result = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
    chosen: dict[int, str] = {}
    by_name = {Path(record.path).name: row for row, record in enumerate(query_records)}
    for selection in queries:
        if isinstance(selection, str) and selection in SELECTIONS:
            for row in select_queries(result.per_query_ap, selection, count, seed):
                chosen.setdefault(row, selection)
        elif isinstance(selection, str):
            if selection not in by_name:
                raise ConfigError(f"query {selection!r} is not worst, best, random, a query index or the file name "
                                  "of a query image")
            chosen.setdefault(by_name[selection], "chosen")
        else:
            chosen.setdefault(int(selection), "chosen")
    lists = ranked_lists(distances, q_pids, g_pids, q_camids, g_camids, list(chosen), top_k, result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    query_sources = query_images if query_images is not None else [record.path for record in query_records]
    gallery_sources = gallery_images if gallery_images is not None else [record.path for record in gallery_records]
    gallery_labels = [f"id {record.pid} cam {record.camid}" for record in gallery_records]
    entries = []
    for ranked in lists:
        record = query_records[ranked.query]
        caption = f"{chosen[ranked.query]}: {Path(record.path).name} (id {record.pid} cam {record.camid})"
        figure = draw_rows([(caption, ranked)], query_sources[ranked.query], gallery_sources, gallery_labels,
                           title)
        path = save_figure(figure, out / f"query-{ranked.query}.png")
        entries.append((caption, path.name, ranked))
    index = out / "index.html"
    summary = (f"mAP {result.mAP:.2%}, Rank-1 {result.rank1:.2%} over {result.num_valid_queries} queries with a "
               f"match; top {top_k} of {len(gallery_records)} gallery images")
    atomic_write_text(index, index_page(f"Ranked lists{': ' + title if title else ''}", summary, [
        (caption, file, f"AP {ranked.ap:.1%}" if not np.isnan(ranked.ap) else "no match")
        for caption, file, ranked in entries
    ]))
    return index


LEGEND = ("✓ solid green frame: correct (same identity, another camera); ✗ dashed red frame: wrong identity; "
          "J dotted grey frame: junk (same identity and same camera as the query: ignored by the metrics, as "
          "evaluate_rank ignores it)")


def index_page(title: str, summary: str, entries: Sequence[tuple[str, str, str]],
               sections: Sequence[tuple[str, str]] = ()) -> str:
    """A small HTML page of pictures: each entry (caption, PNG file relative to the page, detail); ``sections``
    (heading, file) add linked pages or pictures above them."""
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>", f"<p>{html.escape(LEGEND)}</p>"]
    for heading, file in sections:
        target = html.escape(file, quote=True)
        if file.endswith(".png"):
            body.append(f'<h2>{html.escape(heading)}</h2><p><img src="{target}" alt="{html.escape(heading, quote=True)}"></p>')
        else:
            body.append(f'<p><a href="{target}">{html.escape(heading)}</a></p>')
    for caption, file, detail in entries:
        target = html.escape(file, quote=True)
        body.append(f'<figure><img src="{target}" alt="{html.escape(caption, quote=True)}">'
                    f"<figcaption>{html.escape(caption)} — {html.escape(detail)}</figcaption></figure>")
    style = ("body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; } "
             "img { max-width: 100%; height: auto; border: 1px solid #ddd; } figure { margin: 1.2em 0; }")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
