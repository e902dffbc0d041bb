"""Pictures (issue 21): the Pareto chart's texts never overlap and its ticks are plain numbers, ranked lists mark
what evaluate_rank counts, training curves from a run's metrics.jsonl, and `edgereid eval --visualize`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import pyplot as plt
from matplotlib.text import Annotation, Text
from PIL import Image

from edgereid.errors import ConfigError
from edgereid.evaluation.rank import evaluate_rank
from edgereid.report.plot import ParetoPoint, draw_pareto, measured_on_target, pareto_frontier, plain_number
from edgereid.report.ranked import CORRECT, JUNK, WRONG, draw_ranked_lists, figure_pixels, ranked_lists
from edgereid.report.table import build_report
from edgereid.run_curves import CURVES_FILE, plot_training_curves
from edgereid.run_curves import DPI as CURVES_DPI
from edgereid.run_curves import FIGURE_SIZE_IN as CURVES_SIZE

# The demo's variants: two networks of one recipe at four precisions on ONNX Runtime, in two tight clusters.
DEMO = [
    ("student", "fp32", 0.21, 0.612), ("student", "fp16", 0.35, 0.612), ("student", "int8", 0.95, 0.609),
    ("student", "int8_cpu", 0.18, 0.607), ("teacher", "fp32", 0.52, 0.701), ("teacher", "fp16", 0.80, 0.7012),
    ("teacher", "int8", 2.4, 0.698), ("teacher", "int8_cpu", 0.41, 0.699),
]


def _points(data: list[tuple[str, str, float, float]]) -> list[ParetoPoint]:
    return [
        ParetoPoint(f"quickstart_mutual/{model} {precision.upper()} onnxruntime", latency, mAP, precision,
                    "onnxruntime", model=f"quickstart_mutual/{model} (plaincnn16, 128×64)",
                    on_target=measured_on_target(precision, "onnxruntime"))
        for model, precision, latency, mAP in data
    ]


def _text_boxes(figure: plt.Figure) -> list[tuple[str, object]]:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    # Tick labels as drawn: those of the ticks in view (an axis keeps spare ticks outside it, not drawn).
    in_view = []
    for axes in figure.axes:
        area = axes.get_window_extent(renderer)
        for label in axes.get_xticklabels(which="both"):
            middle = (Text.get_window_extent(label, renderer).x0 + Text.get_window_extent(label, renderer).x1) / 2
            in_view += [label] if area.x0 - 1 <= middle <= area.x1 + 1 else []
        for label in axes.get_yticklabels(which="both"):
            middle = (Text.get_window_extent(label, renderer).y0 + Text.get_window_extent(label, renderer).y1) / 2
            in_view += [label] if area.y0 - 1 <= middle <= area.y1 + 1 else []
    every_tick_label = {id(label) for axes in figure.axes for axis in (axes.xaxis, axes.yaxis)
                        for tick in [*axis.majorTicks, *axis.minorTicks] for label in (tick.label1, tick.label2)}
    drawn = [text for text in figure.findobj(Text) if id(text) not in every_tick_label] + in_view
    boxes = []
    for text in drawn:
        if not text.get_visible() or not text.get_text().strip():
            continue
        if isinstance(text, Annotation):
            text.update_positions(renderer)
        # The text's own box (an annotation's leader line is not text).
        boxes.append((text.get_text(), Text.get_window_extent(text, renderer)))
    return boxes


@pytest.mark.parametrize("case", ["demo", "dense"])
def test_pareto_texts_do_not_overlap(case: str) -> None:
    data = DEMO
    if case == "dense":
        # Eight variants within 2 % of latency and 0.2 points of mAP of each other.
        data = [(f"m{index % 3}", ("fp32", "fp16", "int8_cpu")[index % 3], 1.0 + 0.002 * index, 0.5 + 0.0002 * index)
                for index in range(8)]
    points = _points(data)
    frontier = pareto_frontier([point.latency_ms for point in points], [point.mAP for point in points])
    figure, _ = draw_pareto(points, frontier, "mAP vs latency, synthetic (120 query / 480 gallery)\non a CPU")
    try:
        boxes = _text_boxes(figure)
        overlapping = [(first[0], second[0]) for index, first in enumerate(boxes) for second in boxes[index + 1:]
                       if first[1].overlaps(second[1])]  # type: ignore[attr-defined]
        assert overlapping == []
        page = figure.bbox
        outside = [text for text, box in boxes if not (page.x0 <= box.x0 and box.x1 <= page.x1  # type: ignore[attr-defined]
                                                       and page.y0 <= box.y0 and box.y1 <= page.y1)]  # type: ignore[attr-defined]
        assert outside == []
        texts = [text for text, _ in boxes]
        numbers = {text.get_text() for text in figure.axes[0].texts if isinstance(text, Annotation)}
        if case == "demo":
            # Every point has its number beside it, and the key names every number.
            assert numbers == {str(number) for number in range(1, len(points) + 1)}
        for number, point in enumerate(points, start=1):
            assert any(text.startswith(f"{number}  ") and point.label.split()[0][:20] in text for text in texts)
        # Millisecond ticks in plain numbers, no scientific notation.
        ticks = [label.get_text() for label in figure.axes[0].get_xticklabels(which="both") if label.get_text()]
        assert ticks and not any("10^" in tick or "times" in tick or "$" in tick or "e-" in tick for tick in ticks)
    finally:
        plt.close(figure)


def test_plain_numbers_and_targets() -> None:
    assert [plain_number(value) for value in (0.2, 0.05, 1.0, 20.0, 300.0, 1.25)] == ["0.2", "0.05", "1", "20",
                                                                                        "300", "1.25"]
    assert not measured_on_target("int8", "onnxruntime") and measured_on_target("int8", "tensorrt")
    assert measured_on_target("int8_cpu", "onnxruntime") and measured_on_target("fp32", "onnxruntime")


# --- ranked lists --------------------------------------------------------------------------------------------------


def _hand_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    q_pids, q_camids = np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1])
    g_pids = np.array([1, 1, 2, 3, 2, 1, 3, 5, 2])
    g_camids = np.array([0, 1, 1, 1, 0, 1, 0, 0, 1])
    distances = np.array([
        [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.6, 0.7],  # junk first, then wrong, correct at rank 4
        [0.5, 0.5, 0.5, 0.1, 0.2, 0.9, 0.3, 0.4, 0.5],  # ties: equal distances rank by gallery index
        [0.3, 0.2, 0.1, 0.6, 0.9, 0.8, 0.05, 0.4, 0.7],  # best match first
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # identity 4 is not in the gallery: skipped
    ])
    return distances, q_pids, g_pids, q_camids, g_camids


def test_ranked_marks_are_what_evaluate_rank_counts() -> None:
    distances, q_pids, g_pids, q_camids, g_camids = _hand_case()
    result = evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
    lists = ranked_lists(distances, q_pids, g_pids, q_camids, g_camids, range(4), top_k=len(g_pids))
    first_hits = []
    for ranked in lists:
        assert len(ranked.marks) == len(g_pids)
        kept = [mark for mark in ranked.marks if mark != JUNK]
        hits = [index for index, mark in enumerate(kept) if mark == CORRECT]
        if not hits:
            assert np.isnan(ranked.ap) and np.isnan(result.per_query_ap[ranked.query])
            continue
        # AP recomputed from the marks alone, junk removed, as the Market protocol does.
        ap = np.mean([(found + 1) / (rank + 1) for found, rank in enumerate(hits)])
        assert ranked.ap == pytest.approx(ap) == pytest.approx(result.per_query_ap[ranked.query])
        first_hits.append(hits[0])
    assert np.mean([hit == 0 for hit in first_hits]) == pytest.approx(result.rank1)
    assert result.mAP == pytest.approx(np.nanmean([ranked.ap for ranked in lists]))
    # By hand: query 0 sees its own-camera image first (junk), then identities 2, 2, 1 (correct).
    assert lists[0].marks[:4] == (JUNK, WRONG, WRONG, CORRECT)
    assert list(lists[0].gallery[:4]) == [0, 2, 4, 5]
    # Query 1's three tied 0.5s after 0.1, 0.2, 0.3, 0.4 keep gallery order 0, 1, 2; then 8.
    assert list(lists[1].gallery[4:8]) == [0, 1, 2, 8]
    assert lists[1].marks[:7] == (WRONG, JUNK, WRONG, WRONG, WRONG, WRONG, CORRECT)


def test_draw_ranked_lists_writes_pngs_and_an_index(tmp_path: Path) -> None:
    from edgereid.data.records import ImageRecord

    distances, q_pids, g_pids, q_camids, g_camids = _hand_case()
    rng = np.random.default_rng(0)

    def image(path: Path) -> Path:
        Image.fromarray(rng.integers(0, 255, size=(96, 48, 3), dtype=np.uint8)).save(path)
        return path

    query = [ImageRecord(image(tmp_path / f"q{index}.jpg"), int(pid), int(cam))
             for index, (pid, cam) in enumerate(zip(q_pids, q_camids, strict=True))]
    gallery = [ImageRecord(image(tmp_path / f"g{index}.jpg"), int(pid), int(cam))
               for index, (pid, cam) in enumerate(zip(g_pids, g_camids, strict=True))]
    out = tmp_path / "ranked"
    index = draw_ranked_lists(distances, query, gallery, out, queries=["worst", "best", 0, "q1.jpg"], count=1,
                              top_k=5, title="hand-built")
    pictures = sorted(out.glob("query-*.png"))
    # Worst AP is query 1 (1/7), best query 2 (1); query 0 and q1.jpg (query 1 again) are chosen by hand; query 3
    # has no match and is never drawn as worst.
    assert [path.name for path in pictures] == ["query-0.png", "query-1.png", "query-2.png"]
    for picture in pictures:
        with Image.open(picture) as opened:
            opened.verify()
        with Image.open(picture) as opened:
            assert opened.format == "PNG" and opened.size == figure_pixels(5)
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>") and all(f'src="{path.name}"' in page for path in pictures)
    assert "junk" in page and "AP 100.0%" in page
    with pytest.raises(ConfigError, match="'nobody.jpg' is not worst, best, random"):
        draw_ranked_lists(distances, query, gallery, out, queries=["nobody.jpg"])


# --- training curves -----------------------------------------------------------------------------------------------


def _tiny_run(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    lines = []
    for iteration in range(1, 7):
        lines.append({"kind": "train", "iteration": iteration * 10, "epoch": 1 + iteration // 3,
                      "lr": 3.5e-4 * iteration / 6, "loss": 5.0 / iteration, "loss_ce": 4.0 / iteration,
                      "loss_triplet": 1.0 / iteration, "images_per_s": 100.0})
        if iteration % 3 == 0:
            lines.append({"kind": "eval", "epoch": iteration // 3, "iteration": iteration * 10,
                          "mAP": 0.1 * iteration, "rank1": 0.12 * iteration, "mAP/teacher": 0.11 * iteration,
                          "rank1/teacher": 0.13 * iteration})
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "train", "iter'  # killed mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def test_training_curves_from_metrics(tmp_path: Path) -> None:
    run_dir = _tiny_run(tmp_path / "run")
    path = plot_training_curves(run_dir)
    assert path == run_dir / CURVES_FILE
    with Image.open(path) as opened:
        opened.verify()
    with Image.open(path) as opened:
        assert opened.format == "PNG"
        assert opened.size == (int(CURVES_SIZE[0] * CURVES_DPI), int(CURVES_SIZE[1] * CURVES_DPI))
    assert not list(run_dir.glob(".*.tmp"))

    report = build_report([run_dir], tmp_path / "report")
    assert report.groups == [] and [plot.name for plot in report.plots] == ["curves-run.png"]
    assert report.document["pictures"] == [{"title": f"training curves of {run_dir}", "file": "curves-run.png"}]
    assert 'src="curves-run.png"' in report.html.read_text()
    assert "![training curves" in report.markdown.read_text()


def test_training_writes_curves_at_each_evaluation(tmp_path: Path) -> None:
    from edgereid.data.synthetic import generate_synthetic
    from edgereid.recipes import recipe_from_dict
    from edgereid.training import train
    from tests.factories import SIZE

    root = tmp_path / "data"
    generate_synthetic(root, num_ids=8, num_cameras=2, seed=0, size=SIZE, images_per_id_per_camera=2)
    recipe = recipe_from_dict({
        "name": "curves", "seed": 0,
        "data": {"root": str(root), "format": "market1501", "size": list(SIZE), "sampler": {"p": 4, "k": 2}},
        "model": {"backbone": {"name": "plaincnn16"}},
        "solver": {"epochs": 2, "iters_per_epoch": 2, "schedule": {"name": "multistep", "steps": [1]}},
        "train": {"output_dir": str(tmp_path / "runs"), "device": "cpu", "eval_period": 1, "log_period": 1},
    })
    result = train(recipe, show_progress=False)
    curves = result.run_dir / CURVES_FILE
    with Image.open(curves) as opened:
        assert opened.format == "PNG"


# --- edgereid eval --visualize -------------------------------------------------------------------------------------


def _eval_visualize(tmp_path: Path, *options: str) -> tuple[Path, dict[str, Any], Path]:
    """`edgereid eval --visualize --json` with ``options`` of an untrained plaincnn16 on its synthetic data set: the
    checkpoint, the JSON printed and the pictures' directory."""
    from edgereid.cli import _ReportingGroup
    from edgereid.cli.train import eval_command
    from tests.factories import make_checkpoint

    checkpoint = make_checkpoint(tmp_path, ibn=None, backbone="plaincnn16")
    group = _ReportingGroup("edgereid")
    group.add_command(eval_command)
    out = tmp_path / "ranked"
    result = CliRunner().invoke(group, ["eval", str(checkpoint), "--device", "cpu", "--visualize", str(out),
                                        "--json", *options])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["visualization"] == str(out / "index.html")
    return checkpoint, printed, out


def test_eval_visualize(tmp_path: Path) -> None:
    from edgereid.training import evaluate_checkpoint

    checkpoint, printed, out = _eval_visualize(tmp_path, "--visualize-queries", "worst,3", "--top-k", "6")
    expected = evaluate_checkpoint(checkpoint, device="cpu").to_dict()
    assert printed["mAP"] == pytest.approx(expected["mAP"]) and printed["rank1"] == pytest.approx(expected["rank1"])
    pictures = sorted(out.glob("query-*.png"))
    assert len(pictures) == 5 and (out / "query-3.png") in pictures  # four worst and query 3
    for picture in pictures:
        with Image.open(picture) as opened:
            assert opened.format == "PNG" and opened.size == figure_pixels(6)


# A holdout of four identities cut from the synthetic train split: a query per identity and camera (8), the rest of
# their images the gallery (16) — not the recorded query/gallery, so the counts tell which data were scored.
HOLDOUT = ["--format", "market1501", "--holdout-ids", "4", "--holdout-seed", "1"]


def test_eval_visualize_reads_the_selected_data(tmp_path: Path) -> None:
    from edgereid.data import load_dataset
    from edgereid.data.selection import DataSelection
    from edgereid.training import evaluate_checkpoint

    checkpoint, printed, out = _eval_visualize(tmp_path, *HOLDOUT, "--visualize-queries", "worst")
    selection = DataSelection(format="market1501", holdout_ids=4, holdout_seed=1)
    expected = evaluate_checkpoint(checkpoint, data=selection, device="cpu")
    assert (printed["num_query"], printed["num_gallery"]) == (expected.num_query, expected.num_gallery) == (8, 16)
    assert len(load_dataset(tmp_path / "synthetic").query) != expected.num_query
    assert printed["mAP"] == pytest.approx(expected.result.mAP)
    assert f"of {expected.num_gallery} gallery images" in (out / "index.html").read_text()
    pictures = sorted(out.glob("query-*.png"))
    assert len(pictures) == 4 and all(int(picture.stem.removeprefix("query-")) < 8 for picture in pictures)


# --- reduced precisions against FP32 -------------------------------------------------------------------------------


def _verify_visualize(tmp_path: Path, *options: str) -> tuple[dict[str, Any], Path]:
    """`edgereid verify --visualize --json` with ``options`` of an FP32 + FP16 bundle of an untrained plaincnn16 on
    its synthetic data set: the JSON printed and the pictures' directory."""
    from edgereid.cli import _ReportingGroup
    from edgereid.cli.verify import verify_command
    from edgereid.export import export_checkpoint
    from tests.factories import make_checkpoint

    bundle = export_checkpoint(make_checkpoint(tmp_path, ibn=None, backbone="plaincnn16"), tmp_path / "bundle",
                               precisions=("fp32", "fp16"))
    group = _ReportingGroup("edgereid")
    group.add_command(verify_command)
    out = tmp_path / "pictures"
    result = CliRunner().invoke(group, ["verify", str(bundle.path), "--data", str(tmp_path / "synthetic"),
                                        "--visualize", str(out), "--json", "-o", "threads=1", *options])
    assert result.exit_code in (0, 1), result.output
    printed = json.loads(result.stdout)
    assert printed["visualization"] == str(out / "index.html")
    return printed, out


def test_verify_visualize_draws_precision_differences(tmp_path: Path) -> None:
    _, out = _verify_visualize(tmp_path)
    page = (out / "index.html").read_text()
    for picture in [out / "ap-diff-fp16.png", *(out / "fp32-reference").glob("query-*.png"), *out.glob("diff-*.png")]:
        with Image.open(picture) as opened:
            assert opened.format == "PNG"
    assert 'src="ap-diff-fp16.png"' in page and 'href="fp32-reference/index.html"' in page
    with Image.open(out / "ap-diff-fp16.png") as opened:
        assert opened.size == (800, 450)


def test_verify_visualize_reads_the_selected_data(tmp_path: Path) -> None:
    printed, out = _verify_visualize(tmp_path, *HOLDOUT)
    assert (printed["dataset"]["num_query"], printed["dataset"]["num_gallery"]) == (8, 16)
    assert "8 query / 16 gallery images" in (out / "index.html").read_text()
    assert "of 16 gallery images" in (out / "fp32-reference" / "index.html").read_text()
    for picture in [out / "ap-diff-fp16.png", *(out / "fp32-reference").glob("query-*.png")]:
        with Image.open(picture) as opened:
            assert opened.format == "PNG"


def test_sensitivity_chart_from_a_manifest_record(tmp_path: Path) -> None:
    from edgereid.report.precision_diff import plot_sensitivity

    accuracy = {
        "drop_points_before": 1.8, "heldout_threshold_points": 0.3,
        "steps": [{"layers_in_float": 1, "drop_points": 0.9, "mAP": 0.5}, {"layers_in_float": 2, "drop_points": 0.2,
                                                                            "mAP": 0.51}],
        "excluded_layers": [
            {"node": "/backbone/conv1/Conv", "op_type": "Conv", "embedding_error": 0.04, "rank": 1, "of": 20},
            {"node": "/head/fc/Gemm", "op_type": "Gemm", "embedding_error": 0.01, "rank": 2, "of": 20},
        ],
    }
    path = plot_sensitivity(accuracy, "int8_cpu", tmp_path / "sensitivity.png")
    assert path is not None
    with Image.open(path) as opened:
        assert opened.format == "PNG" and opened.size == (1000, 450)
    assert plot_sensitivity({"excluded_layers": [], "steps": []}, "int8", tmp_path / "none.png") is None
    # With every layer's score recorded, the chart shows the most sensitive ones, kept or not, at the same size.
    ranking = [{"node": f"/layer{i}/Conv", "op_type": "Conv", "embedding_error": 0.05 / (i + 1)} for i in range(40)]
    ranked = plot_sensitivity({**accuracy, "ranking": ranking}, "int8_cpu", tmp_path / "ranked.png")
    assert ranked is not None
    with Image.open(ranked) as opened:
        assert opened.size == (1000, 450)
