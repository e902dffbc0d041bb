"""`edgereid bench` and `edgereid report`: the bench document of a real (tiny) bundle, parameter and FLOP counts
against torch's and against hand arithmetic, the environment, the report built from real verify and bench runs
(table, JSON, chart, HTML in headless Chromium), the Pareto frontier against brute force, and bad input."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from edgereid.cli import _ReportingGroup
from edgereid.cli.bench import bench_command
from edgereid.cli.report import report_command
from edgereid.data.selection import DataSelection
from edgereid.errors import ConfigError, DataError
from edgereid.export import ExportBundle
from edgereid.report import bench_target, onnx_complexity, resolve_target, torch_complexity
from edgereid.report.plot import DPI, FIGURE_SIZE_IN, pareto_frontier
from edgereid.report.table import build_report
from edgereid.runtime import verify_runtime
from edgereid.runtime.environment import INT8_DOT_PRODUCT_FEATURES, describe_environment, machine_summary
from edgereid.training.checkpoint import load_checkpoint
from edgereid.training.evaluate import build_model
from tests.factories import SIZE, make_bundle

BATCHES = (1, 32)
CHROMIUM = next((shutil.which(name) for name in ("chromium-headless-shell", "chromium", "chromium-browser",
                                                 "google-chrome") if shutil.which(name)), None)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def bundle(base: Path) -> ExportBundle:
    return make_bundle(base, ("fp32", "fp16"))


@pytest.fixture(scope="module")
def bench(bundle: ExportBundle) -> dict[str, Any]:
    return bench_target(bundle.path, batches=BATCHES, warmup=1, iters=3, threads=1)


@pytest.fixture(scope="module")
def verify(bundle: ExportBundle, base: Path) -> dict[str, Any]:
    return verify_runtime(bundle, data=DataSelection(root=base / "synthetic"), threads=1)


@pytest.fixture(scope="module")
def results(base: Path, bench: dict[str, Any], verify: dict[str, Any]) -> tuple[Path, Path]:
    return _write(base / "results" / "verify.json", verify), _write(base / "results" / "bench.json", bench)


def _write(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


# --- bench ---------------------------------------------------------------------------------------------------------


def test_bench_document_has_every_field(bench: dict[str, Any], bundle: ExportBundle) -> None:
    assert bench["kind"] == "edgereid.bench" and bench["schema_version"] == 1
    assert isinstance(bench["created"], str) and bench["target"] == str(bundle.path.resolve())
    assert bench["target_kind"] == "bundle" and bench["bundle"] == str(bundle.path.resolve())
    assert bench["model_id"] == bundle.manifest["models"]["fp32"]["sha256"]
    assert (bench["recipe"], bench["network"], bench["backbone"]) == ("tiny", "model", "resnet18")
    assert bench["input"] == list(SIZE) and bench["feature_dim"] == 512
    assert isinstance(bench["params"], int) and isinstance(bench["flops"], int)
    assert bench["settings"] == {"warmup": 1, "iters": 3, "batches": list(BATCHES), "runner_options": {"threads": 1}}
    assert set(bench["environment"]) >= {"os", "cpu", "memory_mb", "gpus", "python", "libraries"}

    assert [(run["precision"], run["batch"]) for run in bench["runs"]] == list(itertools.product(("fp32", "fp16"),
                                                                                                BATCHES))
    for run in bench["runs"]:
        assert run["backend"] == "onnxruntime" and run["backend_detail"].startswith("onnxruntime ")
        assert run["model_bytes"] == bundle.model_path(run["precision"]).stat().st_size
        latency = run["latency_ms"]
        assert set(latency) == {"mean", "p50", "p90", "p99"}
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert run["throughput_ips"] == pytest.approx(run["batch"] / (latency["mean"] / 1000))
        # ONNX Runtime on the CPU: all of it is compute, there are no copies to separate.
        assert 0 < run["compute_ms"] <= latency["p99"] * 1.01
        assert run["host_to_device_ms"] is None and run["device_to_host_ms"] is None
        assert run["peak_memory_mb"] > run["baseline_memory_mb"] > 0
        assert run["device_peak_memory_mb"] is None and "fresh Python process" in run["memory_method"]


def test_environment_reports_this_machine() -> None:
    environment = describe_environment()
    cpu = environment["cpu"]
    assert cpu["logical_cores"] >= cpu["usable_cores"] >= 1
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features")))
    assert cpu["int8_dot_product"] == [name for name in INT8_DOT_PRODUCT_FEATURES if f" {name} " in f"{flags} "]
    assert environment["memory_mb"] > 0 and isinstance(environment["gpus"], list)
    libraries = environment["libraries"]
    assert libraries["numpy"] == np.__version__ and libraries["onnx"] == onnx.__version__
    assert libraries["torch"] == metadata.version("torch")


def test_complexity_of_the_onnx_graph_matches_torch(bundle: ExportBundle) -> None:
    params, flops = onnx_complexity(bundle.model_path("fp32"), bundle.input_size)
    model = build_model(load_checkpoint(bundle.manifest["source"]["checkpoint"]), "cpu")
    dim, torch_params, torch_flops = torch_complexity(model, bundle.input_size)
    assert dim == 512
    assert flops == pytest.approx(torch_flops, rel=0.01)
    # Folding BatchNorm into the convolutions removes its four vectors per layer and adds a bias: a small change.
    assert params == pytest.approx(torch_params, rel=0.01)
    # The classifier is trained but never exported: not counted.
    assert torch_params < sum(parameter.numel() for parameter in model.parameters())


def test_onnx_complexity_by_hand(tmp_path: Path) -> None:
    """Conv (grouped, strided), Gemm (transposed A) and MatMul on a graph with hand-computable counts."""
    weights: dict[str, np.ndarray] = {
        "conv_w": np.zeros((8, 2, 3, 3), np.float32),  # 4 input channels in 2 groups
        "gemm_b": np.zeros((10, 5), np.float32),
        "mat_b": np.zeros((5, 7), np.float32),
        "shape": np.array([1, 8 * 4 * 2], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["ten"]),
        helper.make_node("Transpose", ["ten"], ["ten_t"], perm=[1, 0]),
        helper.make_node("Gemm", ["ten_t", "gemm_b"], ["g"], transA=1),
        helper.make_node("MatMul", ["g", "mat_b"], ["y"]),
    ]
    weights.update(starts=np.array([0], np.int64), ends=np.array([10], np.int64), axes=np.array([1], np.int64))
    graph = helper.make_graph(
        nodes, "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    path = tmp_path / "hand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    params, flops = onnx_complexity(path, (8, 4))
    assert params == 8 * 2 * 9 + 10 * 5 + 5 * 7  # integer shapes and slice bounds are not weights
    conv = (8 * 4 * 2) * (2 * 3 * 3)  # output 8×4×2 elements, each 2 channels × 3×3
    gemm = (1 * 5) * 10  # [10,1]ᵀ · [10,5]
    matmul = (1 * 7) * 5
    assert flops == 2 * (conv + gemm + matmul)


def test_bench_a_checkpoint_resolves_to_the_torch_network(bundle: ExportBundle) -> None:
    run_dir = Path(bundle.manifest["source"]["checkpoint"]).parent
    target = resolve_target(run_dir)
    assert target.kind == "checkpoint" and target.backends == ("torch",) and target.precisions == ("fp32",)
    # The network's own count: the same FLOPs as its exported graph.
    assert target.extra["flops"] == onnx_complexity(bundle.model_path("fp32"), SIZE)[1]
    assert target.bundle.manifest["output"]["feature_dim"] == 512 and target.checkpoint == run_dir / "last.pt"
    assert target.extra["weight_bytes"] > 4 * target.extra["params"]  # float32 weights plus the unused classifier


def test_bench_bad_targets_and_settings(bundle: ExportBundle, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"bench target '{tmp_path / 'missing'}' does not exist"):
        bench_target(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is not a bundle .* an engine .* or a checkpoint"):
        bench_target(tmp_path / "notes.txt")
    (tmp_path / "loose.plan").write_bytes(b"\0")
    with pytest.raises(DataError, match="engine '.*loose.plan' is not inside a bundle"):
        bench_target(tmp_path / "loose.plan")
    stray = bundle.path / "stray.plan"
    stray.write_bytes(b"\0")
    try:
        with pytest.raises(DataError, match="'.*stray.plan' is not recorded in the manifest"):
            bench_target(stray)
    finally:
        stray.unlink()
    with pytest.raises(ConfigError, match="batch sizes must be positive integers, got 0"):
        bench_target(bundle.path, batches=(1, 0))
    with pytest.raises(ConfigError, match="iters must be at least 1"):
        bench_target(bundle.path, iters=0)
    with pytest.raises(ConfigError, match="has no 'int8' model"):
        bench_target(bundle.path, precisions=["int8"])
    with pytest.raises(ConfigError, match="the torch backend runs fp32; got precision 'fp16'"):
        bench_target(bundle.path, backends=["torch"], precisions=["fp16"])
    with pytest.raises(ConfigError, match="has no fp32 TensorRT engine; build it with edgereid build"):
        bench_target(bundle.path, backends=["tensorrt"], precisions=["fp32"])
    # An error inside the measuring process comes back as the same error class and message.
    with pytest.raises(ConfigError, match="threads must be at least 1, got 0"):
        bench_target(bundle.path, batches=(1,), warmup=0, iters=1, threads=0)


# --- report --------------------------------------------------------------------------------------------------------


def test_report_from_real_runs(results: tuple[Path, Path], verify: dict[str, Any], bench: dict[str, Any],
                               tmp_path: Path) -> None:
    report = build_report(results, tmp_path / "out")
    assert [path.name for path in report.plots] == ["pareto.png"]
    document = json.loads(report.json.read_text())
    assert document == json.loads(json.dumps(report.document))
    (group,) = document["groups"]
    assert group["dataset"] == verify["dataset"]
    rows = {row["precision"]: row for row in group["rows"]}
    assert list(rows) == ["fp32", "fp16"]
    for precision, row in rows.items():
        accuracy = verify["results"][precision]
        runs = {run["batch"]: run for run in bench["runs"] if run["precision"] == precision}
        assert (row["mAP"], row["rank1"], row["mINP"]) == (accuracy["mAP"], accuracy["rank1"], accuracy["mINP"])
        assert row["delta_mAP_points"] == accuracy["delta_mAP_points"]
        assert row["latency_ms"] == {"b1": runs[1]["latency_ms"]["p50"], "b32": runs[32]["latency_ms"]["p50"]}
        assert row["throughput_ips"] == runs[32]["throughput_ips"] and row["throughput_batch"] == 32
        assert (row["params"], row["flops"], row["model_bytes"]) == (bench["params"], bench["flops"],
                                                                     runs[32]["model_bytes"])
        assert row["accuracy_backend"] == "onnxruntime" and row["label"] == f"tiny {precision.upper()} onnxruntime"
        assert row["verification_passed"] is accuracy["passed"]

    # The chart shows exactly the table's rows, and the frontier is the frontier of those points.
    plot = group["plot"]
    assert [(point["label"], point["latency_ms"], point["mAP"]) for point in plot["points"]] == [
        (row["label"], row["latency_ms"]["b1"], row["mAP"]) for row in group["rows"]
    ]
    assert [point["frontier"] for point in plot["points"]] == _brute_force_frontier(
        [(point["latency_ms"], point["mAP"]) for point in plot["points"]]
    )
    assert plot["not_plotted"] == []
    with Image.open(report.plots[0]) as image:
        image.verify()
    with Image.open(report.plots[0]) as image:
        assert image.format == "PNG"
        assert image.size == (int(FIGURE_SIZE_IN[0] * DPI), int(FIGURE_SIZE_IN[1] * DPI))

    markdown = report.markdown.read_text()
    fp32_row = next(line for line in markdown.splitlines() if "| FP32 |" in line)
    assert fp32_row.startswith("| tiny (resnet18, 64×32) | 11.1")
    assert f"{verify['results']['fp32']['mAP'] * 100:.2f} %" in fp32_row
    assert f"{rows['fp32']['latency_ms']['b1']:.2f} ms" in fp32_row and "![mAP" in markdown
    html_text = report.html.read_text()
    assert html_text.startswith("<!DOCTYPE html>") and "<script" not in html_text
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', html_text)
    assert embedded is not None and base64.b64decode(embedded.group(1)) == report.plots[0].read_bytes()


def _brute_force_frontier(points: list[tuple[float, float]]) -> list[bool]:
    return [
        not any(
            other[0] <= point[0] and other[1] >= point[1] and other != point
            for other in points
        )
        for point in points
    ]


def test_pareto_frontier_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        count = int(rng.integers(1, 12))
        # Small integer grids make ties in latency, score and whole points common.
        points = [(float(x), float(y)) for x, y in rng.integers(0, 5 if trial % 2 else 50, size=(count, 2))]
        latencies, scores = zip(*points, strict=True)
        assert pareto_frontier(latencies, scores) == _brute_force_frontier(points), points
    assert pareto_frontier([], []) == []


def test_report_refuses_mixed_data_sets_unless_grouped(results: tuple[Path, Path], verify: dict[str, Any],
                                                       tmp_path: Path) -> None:
    other = copy.deepcopy(verify)
    other["dataset"].update(name="veri776", fingerprint="f" * 64, num_query=10, num_gallery=20)
    other_path = _write(tmp_path / "verify-veri.json", other)
    files = [*results, other_path]
    with pytest.raises(DataError) as raised:
        build_report(files, tmp_path / "mixed")
    message = str(raised.value)
    assert "2 different data sets" in message and "--group-by-dataset" in message
    assert str(results[0]) in message and str(other_path) in message
    assert "market1501" in message and "veri776" in message
    assert not (tmp_path / "mixed" / "report.md").exists()

    report = build_report(files, tmp_path / "grouped", group_by_dataset=True)
    assert sorted(group.dataset["name"] for group in report.groups if group.dataset) == ["market1501", "veri776"]
    assert len({path.name for path in report.plots}) == 2 and all(path.is_file() for path in report.plots)
    for group in report.groups:
        assert group.dataset is not None and group.dataset["name"] in group.plot["file"]
        # The benchmark of the model joins each data set's accuracy.
        assert all(row["mAP"] is not None and row["latency_ms"]["b1"] is not None for row in group.rows)


def test_missing_fp32_reference_is_unknown_not_zero(results: tuple[Path, Path], verify: dict[str, Any],
                                                    tmp_path: Path) -> None:
    no_reference = copy.deepcopy(verify)
    no_reference["reference"] = None
    for entry in no_reference["results"].values():
        entry.update(delta_mAP_points=None, cosine_min=None, passed=None)
    report = build_report([_write(tmp_path / "verify.json", no_reference), results[1]], tmp_path / "out")
    rows = report.groups[0].rows
    assert rows and all(row["delta_mAP_points"] is None for row in rows)
    table_lines = [line for line in report.markdown.read_text().splitlines() if line.startswith("| tiny (")]
    assert table_lines and all("| unknown |" in line and "+0.00" not in line for line in table_lines)
    assert any("Δ mAP unknown" in note for note in report.groups[0].notes)
    assert not any("tolerance" in note for note in report.groups[0].notes)


def test_accuracy_falls_back_to_onnxruntime_and_unverified_rows_are_not_plotted(
    results: tuple[Path, Path], bench: dict[str, Any], tmp_path: Path
) -> None:
    engine = copy.deepcopy(bench)
    for run in engine["runs"]:
        run["backend"] = "tensorrt"
    other_model = copy.deepcopy(bench)
    other_model.update(model_id="0" * 64, bundle=str(tmp_path / "other-bundle"), recipe="other")
    files = [*results, _write(tmp_path / "trt.json", engine), _write(tmp_path / "other.json", other_model)]
    report = build_report(files, tmp_path / "out")
    (group,) = report.groups
    trt = [row for row in group.rows if row["backend"] == "tensorrt"]
    assert len(trt) == 2 and all(row["accuracy_backend"] == "onnxruntime" and row["mAP"] is not None for row in trt)
    assert any(note.startswith("accuracy measured on onnxruntime") for note in group.notes)
    assert "(onnxruntime)" in report.markdown.read_text()
    unverified = {row["label"] for row in group.rows if row["model"]["recipe"] == "other"}
    assert unverified == {"other FP32 onnxruntime", "other FP16 onnxruntime"}
    assert {entry["label"] for entry in group.plot["not_plotted"]} == unverified
    assert {point["label"] for point in group.plot["points"]}.isdisjoint(unverified)
    assert all(f"not plotted (accuracy unknown): {label}" in group.notes for label in unverified)


def test_report_names_unreadable_and_invalid_files(results: tuple[Path, Path], bench: dict[str, Any],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"result file '{tmp_path / 'none.json'}' does not exist"):
        build_report([results[0], tmp_path / "none.json"], out)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DataError, match=f"result file '{garbage}' is not JSON"):
        build_report([garbage], out)
    manifest = _write(tmp_path / "manifest.json", {"format": "edgereid-bundle"})
    with pytest.raises(DataError, match=f"'{manifest}' is not a verify or bench result"):
        build_report([manifest], out)
    broken = copy.deepcopy(bench)
    del broken["runs"][1]["latency_ms"]
    with pytest.raises(DataError, match=r"'runs\[1\]' lacks 'latency_ms'"):
        build_report([_write(tmp_path / "broken.json", broken)], out)
    future = dict(bench, schema_version=2)
    with pytest.raises(DataError, match="schema version 2; this edgereid reads version 1"):
        build_report([_write(tmp_path / "future.json", future)], out)
    with pytest.raises(DataError, match="two results for the same variant .*tiny FP32 onnxruntime"):
        build_report([*results, _write(tmp_path / "again.json", bench)], out)


def test_html_escapes_text(results: tuple[Path, Path], verify: dict[str, Any], tmp_path: Path) -> None:
    hostile = copy.deepcopy(verify)
    hostile["recipe"] = "<script>alert(1)</script>&"
    report = build_report([_write(tmp_path / "verify.json", hostile)], tmp_path / "out")
    text = report.html.read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (CI: apt-get install chromium-headless-shell)")
def test_html_opens_in_headless_chromium(results: tuple[Path, Path], bench: dict[str, Any], tmp_path: Path) -> None:
    """At 1,280×800: no horizontal page scroll (only the table may scroll, inside its box), no console error,
    every image (the embedded chart and the linked pictures) loads."""
    # A long model name and an off-target INT8 row, the widest the table gets.
    wide = copy.deepcopy(bench)
    wide.update(model_id="1" * 64, bundle=str(tmp_path / "a-bundle-folder-with-a-rather-long-name"),
                recipe="quickstart_mutual_with_a_long_recipe_name", network="student")
    for run in wide["runs"]:
        run["precision"] = "int8"
    picture = tmp_path / "pictures" / "ranked.png"
    picture.parent.mkdir()
    Image.new("RGB", (1500, 300), "white").save(picture)
    (picture.parent / "index.html").write_text("<!DOCTYPE html><title>x</title>")
    report = build_report([*results, _write(tmp_path / "wide.json", wide)], tmp_path / "out",
                          pictures=[("ranked lists", picture), ("ranked lists index", picture.parent / "index.html")])
    assert CHROMIUM is not None
    # The report has no script; a copy of it gets one that writes what the browser measured into the page.
    probe = report.html.with_name("probe.html")
    measure = (
        "<script>window.addEventListener('load', () => { const d = document.documentElement;"
        " const images = [...document.images];"
        " document.body.setAttribute('data-probe', JSON.stringify({scroll: d.scrollWidth, client: d.clientWidth,"
        " images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,"
        " table: Math.max(...[...document.querySelectorAll('.table-scroll')].map(t => t.scrollWidth))})); });</script>"
    )
    probe.write_text(report.html.read_text().replace("</body>", measure + "</body>"))
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,800", "--virtual-time-budget=5000", "--allow-file-access-from-files", "--dump-dom",
         probe.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    # Chromium logs page problems (console errors, resources that do not load) to stderr; a machine without a
    # D-Bus prints unrelated noise there.
    page_errors = [line for line in completed.stderr.splitlines()
                   if re.search(r"CONSOLE|Uncaught|Failed to load resource|net::ERR_", line)]
    assert page_errors == []
    dom = completed.stdout
    assert "<table>" in dom and dom.count("<tr") == 1 + len(report.groups[0].rows)
    assert "tiny (resnet18, 64×32)" in dom and 'src="data:image/png;base64,' in dom
    found = re.search(r"data-probe=\"([^\"]+)\"", dom)
    assert found is not None, dom[-2000:]
    probe_result = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe_result["client"] <= 1280 and probe_result["scroll"] <= probe_result["client"], probe_result
    assert probe_result["images"] == 2 and probe_result["loaded"] == 2, probe_result


def test_off_target_int8_is_hollow_and_off_the_frontier(results: tuple[Path, Path], verify: dict[str, Any],
                                                        bench: dict[str, Any], tmp_path: Path) -> None:
    """The TensorRT-target INT8 model timed by ONNX Runtime is shown, marked, and never on the frontier."""
    int8_verify, int8_bench = copy.deepcopy(verify), copy.deepcopy(bench)
    int8_verify["results"] = {"int8": dict(verify["results"]["fp32"], mAP=1.0)}  # the most accurate of all
    for run in int8_bench["runs"]:
        run["precision"] = "int8"
        run["latency_ms"]["p50"] = 1e-6  # and the fastest
    report = build_report([*results, _write(tmp_path / "v8.json", int8_verify), _write(tmp_path / "b8.json", int8_bench)],
                          tmp_path / "out")
    (group,) = report.groups
    points = {point["label"]: point for point in group.plot["points"]}
    off = points["tiny INT8 onnxruntime"]
    assert off["on_target"] is False and off["frontier"] is False
    assert any(point["frontier"] for point in points.values() if point["on_target"])
    assert any(note.startswith("† latency not measured on the backend") for note in group.notes)
    assert " ms †" in report.markdown.read_text()


def test_terminal_table_fits_80_columns(results: tuple[Path, Path], verify: dict[str, Any], bench: dict[str, Any],
                                        tmp_path: Path) -> None:
    from rich.console import Console

    from edgereid.cli.report import print_report

    files = []
    for network in ("student", "teacher"):
        named_verify, named_bench = copy.deepcopy(verify), copy.deepcopy(bench)
        for document in (named_verify, named_bench):
            document.update(recipe="quickstart_mutual", network=network, model_id=network * 8,
                            bundle=str(tmp_path / f"bundle-{network}"))
        files += [_write(tmp_path / f"v-{network}.json", named_verify), _write(tmp_path / f"b-{network}.json", named_bench)]
    report = build_report(files, tmp_path / "out")
    console = Console(width=80, record=True, color_system=None)
    print_report(report, console)
    text = console.export_text()
    table_lines = [line for line in text.splitlines() if " ORT " in line]
    assert len(table_lines) == 4 and all(len(line) <= 80 for line in table_lines)
    assert {line.split()[0] + " " + line.split()[1] for line in table_lines} == {
        "student FP32", "student FP16", "teacher FP32", "teacher FP16"}
    assert "…" not in "".join(table_lines) and "recipe quickstart_mutual" in text


# --- CLI -----------------------------------------------------------------------------------------------------------


def _cli() -> _ReportingGroup:
    group = _ReportingGroup("edgereid")
    group.add_command(bench_command)
    group.add_command(report_command)
    return group


def test_cli_bench_and_report(bundle: ExportBundle, results: tuple[Path, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "bench.json"
    args = ["bench", str(bundle.path), "--precision", "fp32", "--batch", "2", "--warmup", "0", "--iters", "1",
            "-o", "threads=1"]
    result = runner.invoke(_cli(), [*args, "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert [(run["precision"], run["batch"]) for run in printed["runs"]] == [("fp32", 2)]
    table = runner.invoke(_cli(), args)
    assert table.exit_code == 0 and "fp32" in table.output and "each row in a fresh" in table.output

    bad = runner.invoke(_cli(), ["bench", str(bundle.path), "--batch", "1,x"])
    assert bad.exit_code == 2 and "--batch '1,x' is not a comma-separated list" in bad.output

    report_dir = tmp_path / "report"
    reported = runner.invoke(_cli(), ["report", *map(str, results), "--out", str(report_dir)])
    assert reported.exit_code == 0, reported.output
    assert {path.name for path in report_dir.iterdir()} == {"report.md", "report.html", "report.json", "pareto.png"}
    assert "FP32" in reported.output and "report.md" in reported.output
    missing = runner.invoke(_cli(), ["report", str(tmp_path / "nope.json"), "--out", str(report_dir)])
    assert missing.exit_code == 2 and "nope.json' does not exist" in missing.output


def test_bench_and_environment_never_import_torch(bundle: ExportBundle) -> None:
    """What a device runs (the measuring process, the environment) stays torch-free."""
    script = f"""
import sys
from edgereid.export.bundle import load_bundle
from edgereid.report.bench import measure
from edgereid.runtime.environment import describe_environment
describe_environment()
measure(load_bundle({str(bundle.path)!r}), "onnxruntime", "fp32", 1, 0, 1, {{"threads": 1}})
assert "torch" not in sys.modules, "torch was imported"
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                               cwd=Path(__file__).resolve().parents[1])
    assert completed.returncode == 0, completed.stderr


def test_machine_summary_names_the_gpu_cores_and_int8_instructions() -> None:
    environment = {"cpu": {"model": "AMD EPYC", "usable_cores": 2, "int8_dot_product": ["avx512_vnni"]}, "gpus": []}
    assert machine_summary(environment) == "AMD EPYC (2 cores, avx512_vnni)"
    environment["gpus"] = [{"name": "NVIDIA H100"}]
    environment["cpu"] = {"model": "Xeon", "usable_cores": 8}
    assert machine_summary(environment) == "NVIDIA H100, Xeon (8 cores)"
    assert machine_summary({"machine": "aarch64", "device_model": "NVIDIA Jetson Orin Nano", "cpu": {}}) == (
        "NVIDIA Jetson Orin Nano, aarch64"
    )
