"""`edgereid report`: verify and bench results joined into one table per data set (Markdown, HTML, JSON) and an
mAP-against-latency Pareto chart.

A row is one variant: a model at a precision on a backend (and, for latency, on a machine). Accuracy comes from a
verify result of the same model, precision and backend; where only ONNX Runtime's accuracy exists for that
precision, it is used and the row says "accuracy measured on onnxruntime". A model is matched by its FP32 model's
sha256 where both results carry it, else by its bundle path. Results scored on different data sets are never
mixed silently: they are refused unless grouped per data set. What is not known is shown as unknown, never as 0.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgereid.atomic import atomic_write_text
from edgereid.errors import DataError
from edgereid.report.bench import BENCH_KIND, BENCH_SCHEMA_VERSION
from edgereid.report.plot import ParetoPoint, measured_on_target, pareto_frontier, plot_pareto
from edgereid.run_curves import METRICS_FILE, plot_training_curves
from edgereid.runtime.environment import machine_summary

REPORT_KIND = "edgereid.report"
REPORT_SCHEMA_VERSION = 1
VERIFY_KIND = "edgereid.verify"
VERIFY_SCHEMA_VERSION = 1
ACCURACY_FALLBACK_BACKEND = "onnxruntime"
UNKNOWN = "unknown"
# The batch sizes the table quotes latency at: one image (a live camera) and a batch (a gallery build).
LATENCY_BATCHES = (1, 32)
COLUMNS = (
    "model", "params", "FLOPs", "precision", "backend", "mAP", "Rank-1", "mINP", "Δ mAP vs FP32 (pts)",
    "latency b1 p50", "latency b32 p50", "throughput", "size",
)


@dataclass
class ReportGroup:
    """The rows and chart of one data set (``dataset`` None: bench results no verification could be joined to)."""

    dataset: dict[str, Any] | None
    rows: list[dict[str, Any]]
    plot: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    out_dir: Path
    markdown: Path
    html: Path
    json: Path
    plots: list[Path]
    groups: list[ReportGroup]
    document: dict[str, Any]


@dataclass
class _Result:
    file: Path
    doc: dict[str, Any]

    @property
    def model_id(self) -> str | None:
        value = self.doc.get("model_id")
        return str(value) if value else None

    @property
    def bundle(self) -> str | None:
        value = self.doc.get("bundle")
        return str(Path(value).resolve()) if value else None

    def same_model(self, other: _Result) -> bool:
        if self.model_id and other.model_id:
            return self.model_id == other.model_id
        return self.bundle is not None and self.bundle == other.bundle


def build_report(
    result_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    group_by_dataset: bool = False,
    pictures: Sequence[tuple[str, str | Path]] = (),
) -> Report:
    """Read ``result_files`` (``edgereid verify --out`` and ``edgereid bench --out`` JSON, and training run
    directories), join them and write ``report.md``, ``report.html``, ``report.json`` and the chart(s) to
    ``out_dir``.

    Verify results of different data sets (by dataset fingerprint) are a DataError naming the files and data sets,
    unless ``group_by_dataset``: then each data set gets its own table and chart (``pareto-<data set>.png``). A run
    directory (one with a metrics.jsonl) gets its training curves drawn as ``curves-<run>.png``. ``pictures``
    (title, PNG or HTML file) are linked from the report, by paths relative to ``out_dir``.
    """
    if not result_files and not pictures:
        raise DataError("no result files given; pass the JSON files written by edgereid verify --out / bench --out, "
                        "or training run directories")
    out = Path(out_dir)
    run_dirs = [Path(path) for path in result_files if Path(path).is_dir()]
    for run_dir in run_dirs:
        if not (run_dir / METRICS_FILE).is_file():
            raise DataError(f"'{run_dir}' is a directory but not a training run: it has no {METRICS_FILE}")
    results = [load_result(path) for path in result_files if not Path(path).is_dir()]
    verifies = [result for result in results if result.doc["kind"] == VERIFY_KIND]
    benches = [result for result in results if result.doc["kind"] == BENCH_KIND]

    datasets: dict[str, list[_Result]] = {}
    for result in verifies:
        datasets.setdefault(result.doc["dataset"]["fingerprint"], []).append(result)
    if len(datasets) > 1 and not group_by_dataset:
        described = "; ".join(
            f"{members[0].doc['dataset']['name']} ({fingerprint[:12]}, {members[0].doc['dataset']['num_query']} "
            f"query / {members[0].doc['dataset']['num_gallery']} gallery): {', '.join(str(m.file) for m in members)}"
            for fingerprint, members in datasets.items()
        )
        raise DataError(
            f"the verify results were scored on {len(datasets)} different data sets, whose mAPs cannot be compared "
            f"in one table: {described}. Report one data set at a time, or pass --group-by-dataset for one table "
            "and chart per data set"
        )

    groups: list[ReportGroup] = []
    matched: set[int] = set()
    for members in datasets.values():
        relevant = [bench for bench in benches if any(result.same_model(bench) for result in members)]
        matched.update(id(bench) for bench in relevant)
        groups.append(_group(members, relevant))
    unmatched = [bench for bench in benches if id(bench) not in matched]
    if unmatched:
        extra = _group([], unmatched)
        if len(groups) == 1:
            # One data set: benchmarks of models it has no verification of are listed in its table, mAP unknown.
            groups[0].rows = sorted(groups[0].rows + extra.rows, key=_row_order)
        else:
            groups.append(extra)
    _label_rows([row for group in groups for row in group.rows])
    for group in groups:
        _check_unique(group.rows)

    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for group in groups:
        plots.append(_chart(group, out, len(groups) > 1))
        group.notes = _notes(group)
    linked: list[dict[str, str]] = []
    for run_dir in run_dirs:
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", run_dir.resolve().name).strip("-") or "run"
        curves = plot_training_curves(run_dir, out / f"curves-{slug}.png")
        plots.append(curves)
        linked.append({"title": f"training curves of {run_dir}", "file": curves.name})
    for title, picture in pictures:
        linked.append({"title": title, "file": Path(os.path.relpath(Path(picture).resolve(), out.resolve())).as_posix()})
    document = {
        "kind": REPORT_KIND,
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sources": [{"file": str(result.file), "kind": result.doc["kind"]} for result in results],
        "groups": [
            {"dataset": group.dataset, "rows": group.rows, "plot": group.plot, "notes": group.notes}
            for group in groups
        ],
        "runs": [str(run_dir) for run_dir in run_dirs],
        "pictures": linked,
    }
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    atomic_write_text(paths["markdown"], render_markdown(groups, linked))
    atomic_write_text(paths["html"], render_html(groups, out, linked))
    atomic_write_text(paths["json"], json.dumps(document, indent=2, sort_keys=True) + "\n")
    return Report(out, paths["markdown"], paths["html"], paths["json"], plots, groups, document)


def load_result(path: str | Path) -> _Result:
    """A verify or bench result file, checked for the fields the report reads; anything else a DataError naming
    the file and what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"result file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"result file '{path}' cannot be read ({type(error).__name__}: {error})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"result file '{path}' is not JSON ({error})") from None
    if not isinstance(doc, dict) or doc.get("kind") not in (VERIFY_KIND, BENCH_KIND):
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise DataError(
            f"result file '{path}' is not a verify or bench result (kind {kind!r}; expected '{VERIFY_KIND}' or "
            f"'{BENCH_KIND}', written by edgereid verify --out / edgereid bench --out)"
        )
    expected_version = VERIFY_SCHEMA_VERSION if doc["kind"] == VERIFY_KIND else BENCH_SCHEMA_VERSION
    if doc.get("schema_version") != expected_version:
        raise DataError(
            f"result file '{path}' has {doc['kind']} schema version {doc.get('schema_version')!r}; this edgereid "
            f"reads version {expected_version}"
        )
    checker = _Checker(path)
    checker.keys(doc, "", ("recipe", "network", "backbone", "input"))
    if doc["kind"] == VERIFY_KIND:
        checker.keys(doc, "", ("bundle", "backend", "dataset", "results"))
        checker.keys(doc["dataset"], "dataset", ("fingerprint", "name", "num_query", "num_gallery"))
        checker.mapping(doc["results"], "results")
        for precision, entry in doc["results"].items():
            where = f"results.{precision}"
            checker.keys(entry, where, ("mAP", "rank1", "mINP", "delta_mAP_points"))
            for key in ("mAP", "rank1", "mINP"):
                checker.number(entry[key], f"{where}.{key}", unit_interval=True)
            checker.number(entry["delta_mAP_points"], f"{where}.delta_mAP_points", nullable=True)
    else:
        checker.keys(doc, "", ("target", "params", "flops", "environment", "runs"))
        checker.number(doc["params"], "params", nullable=True)
        checker.number(doc["flops"], "flops", nullable=True)
        if not isinstance(doc["runs"], list) or not doc["runs"]:
            raise DataError(f"result file '{path}': 'runs' must be a non-empty list of measurements")
        for index, run in enumerate(doc["runs"]):
            where = f"runs[{index}]"
            checker.keys(run, where, ("backend", "precision", "batch", "latency_ms", "throughput_ips", "model_bytes"))
            checker.keys(run["latency_ms"], f"{where}.latency_ms", ("p50",))
            checker.number(run["latency_ms"]["p50"], f"{where}.latency_ms.p50")
            checker.number(run["throughput_ips"], f"{where}.throughput_ips")
            checker.number(run["batch"], f"{where}.batch")
    return _Result(path, doc)


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mapping(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise DataError(f"result file '{self.path}': '{where}' must be an object, got {type(value).__name__}")

    def keys(self, value: Any, where: str, keys: Sequence[str]) -> None:
        self.mapping(value, where or "the document")
        missing = [key for key in keys if key not in value]
        if missing:
            place = f"'{where}'" if where else "the document"
            raise DataError(f"result file '{self.path}': {place} lacks {', '.join(map(repr, missing))}")

    def number(self, value: Any, where: str, *, nullable: bool = False, unit_interval: bool = False) -> None:
        if value is None and nullable:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"result file '{self.path}': '{where}' must be a number, got {value!r}")
        if unit_interval and not 0.0 <= value <= 1.0:
            raise DataError(f"result file '{self.path}': '{where}' must be a fraction in [0, 1], got {value!r}")


def _group(verifies: list[_Result], benches: list[_Result]) -> ReportGroup:
    """The rows of one data set: every bench variant of ``benches`` (with accuracy where a verification of the
    model has it) and every verified variant that no bench row took its accuracy from."""
    rows: list[dict[str, Any]] = []
    used: set[tuple[int, str]] = set()
    for bench in benches:
        machine = machine_summary(bench.doc["environment"])
        variants: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for run in bench.doc["runs"]:
            variants.setdefault((run["precision"], run["backend"]), []).append(run)
        matches = [result for result in verifies if result.same_model(bench)]
        for (precision, backend), runs in variants.items():
            source = _accuracy_source(matches, precision, backend)
            if source is not None:
                used.add((id(source[0]), precision))
            rows.append(_row(bench, precision, backend, machine, runs, source))
    for result in verifies:
        for precision, entry in result.doc["results"].items():
            if (id(result), precision) not in used:
                rows.append(_row(result, precision, result.doc["backend"], None, [], (result, entry)))
    dataset = dict(verifies[0].doc["dataset"]) if verifies else None
    return ReportGroup(dataset, sorted(rows, key=_row_order))


def _accuracy_source(
    matches: list[_Result], precision: str, backend: str
) -> tuple[_Result, dict[str, Any]] | None:
    """The verification of this precision on this backend, else on ONNX Runtime (the reference runtime)."""
    for wanted in (backend, ACCURACY_FALLBACK_BACKEND):
        for result in matches:
            if result.doc["backend"] == wanted and precision in result.doc["results"]:
                return result, result.doc["results"][precision]
    return None


def _row(
    result: _Result,
    precision: str,
    backend: str,
    machine: str | None,
    runs: list[dict[str, Any]],
    accuracy: tuple[_Result, dict[str, Any]] | None,
) -> dict[str, Any]:
    doc = result.doc
    by_batch = {int(run["batch"]): run for run in runs}
    largest = max(by_batch) if by_batch else None
    entry = accuracy[1] if accuracy else None
    accuracy_backend = accuracy[0].doc["backend"] if accuracy else None
    return {
        "model": {"recipe": doc["recipe"], "network": doc["network"], "backbone": doc["backbone"],
                  "input": list(doc["input"]), "bundle": result.bundle, "model_id": result.model_id,
                  # A checkpoint's benchmark has no bundle: the checkpoint is the model.
                  "checkpoint": None if result.bundle else str(doc.get("target"))},
        "params": doc.get("params"),
        "flops": doc.get("flops"),
        "precision": precision,
        "backend": backend,
        "backend_detail": runs[0].get("backend_detail") if runs else doc.get("backend_detail"),
        "machine": machine,
        "mAP": entry["mAP"] if entry else None,
        "rank1": entry["rank1"] if entry else None,
        "mINP": entry["mINP"] if entry else None,
        "delta_mAP_points": entry["delta_mAP_points"] if entry else None,
        "verification_passed": entry.get("passed") if entry else None,
        "accuracy_backend": accuracy_backend,
        "latency_ms": {f"b{batch}": by_batch[batch]["latency_ms"]["p50"] if batch in by_batch else None
                       for batch in LATENCY_BATCHES},
        "throughput_ips": by_batch[largest]["throughput_ips"] if largest else None,
        "throughput_batch": largest,
        "model_bytes": by_batch[largest]["model_bytes"] if largest else None,
        "sources": sorted({str(result.file), *([str(accuracy[0].file)] if accuracy else [])}),
    }


def _row_order(row: dict[str, Any]) -> tuple[Any, ...]:
    precision_rank = {"fp32": 0, "fp16": 1, "int8": 2}.get(row["precision"], 3)
    return (row["model"]["recipe"], row["model"]["network"], str(row["model"]["bundle"]), row["backend"],
            precision_rank, row["machine"] or "")


def _model_name(row: dict[str, Any]) -> str:
    model = row["model"]
    # A single-network checkpoint's network is called "model"; a mutual-learning one names the network.
    return model["recipe"] if model["network"] == "model" else f"{model['recipe']}/{model['network']}"


def _label_rows(rows: list[dict[str, Any]]) -> None:
    """A short, unique label per row for the table and the chart: model, precision and backend, plus what else
    tells rows apart (the bundle's folder, the machine)."""
    models: dict[str, set[Any]] = {}
    for row in rows:
        models.setdefault(_model_name(row), set()).add(row["model"]["bundle"] or row["model"]["checkpoint"])
    machines = {row["machine"] for row in rows if row["machine"]}
    for row in rows:
        name = _model_name(row)
        if len(models[name]) > 1:
            name += f" [{Path(row['model']['bundle'] or row['model']['checkpoint']).name}]"
        height, width = row["model"]["input"]
        where = f" @ {row['machine']}" if len(machines) > 1 and row["machine"] else ""
        # The table's model column; precision and backend have their own columns there.
        row["model_label"] = f"{name} ({row['model']['backbone']}, {height}×{width}){where}"
        row["label"] = f"{name} {row['precision'].upper()} {row['backend']}{where}"


def _check_unique(rows: list[dict[str, Any]]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["label"] in seen:
            files = sorted({*seen[row["label"]]["sources"], *row["sources"]})
            raise DataError(
                f"two results for the same variant ({row['label']}) in {', '.join(files)}: keep one of them (a newer "
                "measurement replaces an older one)"
            )
        seen[row["label"]] = row


def _chart(group: ReportGroup, out: Path, several: bool) -> Path:
    plotted = [row for row in group.rows if row["mAP"] is not None and row["latency_ms"]["b1"] is not None]
    points = [
        ParetoPoint(row["label"], row["latency_ms"]["b1"], row["mAP"], row["precision"], row["backend"],
                    model=row["model_label"], on_target=measured_on_target(row["precision"], row["backend"]))
        for row in plotted
    ]
    # A latency not measured on the model's own backend is no deployment's: such a point is drawn, not ranked.
    ranked = [point for point in points if point.on_target]
    ranked_frontier = iter(pareto_frontier([point.latency_ms for point in ranked], [point.mAP for point in ranked]))
    frontier = [next(ranked_frontier) if point.on_target else False for point in points]
    name = "pareto.png"
    if several:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", group.dataset["name"] if group.dataset else "no-dataset").strip("-")
        name = f"pareto-{slug}" + (f"-{group.dataset['fingerprint'][:8]}" if group.dataset else "") + ".png"
    path = out / name
    scale = plot_pareto(points, frontier, path, _title(group))
    group.plot = {
        "file": name,
        "x": "latency_ms at batch 1 (p50)",
        "y": "mAP",
        "x_scale": scale,
        "points": [
            {"number": number, "label": point.label, "latency_ms": point.latency_ms, "mAP": point.mAP,
             "frontier": on, "on_target": point.on_target}
            for number, (point, on) in enumerate(zip(points, frontier, strict=True), start=1)
        ],
        "not_plotted": [
            {"label": row["label"], "reason": "accuracy unknown" if row["mAP"] is None else "no batch-1 latency"}
            for row in group.rows if row not in plotted
        ],
    }
    return path


def _title(group: ReportGroup) -> str:
    dataset = group.dataset
    data = (
        f"{dataset['name']} ({dataset['num_query']} query / {dataset['num_gallery']} gallery)"
        if dataset else "no verification: accuracy unknown"
    )
    machines = sorted({row["machine"] for row in group.rows if row["machine"]})
    return f"mAP vs latency, {data}\non {'; '.join(machines) or 'unknown machine'}"


def _notes(group: ReportGroup) -> list[str]:
    notes = []
    fallback = [row["label"] for row in group.rows
                if row["accuracy_backend"] and row["accuracy_backend"] != row["backend"]]
    if fallback:
        notes.append(f"accuracy measured on {ACCURACY_FALLBACK_BACKEND} (no verification on the row's own "
                     f"backend): {', '.join(fallback)}")
    unknown_delta = [row["label"] for row in group.rows if row["mAP"] is not None and row["delta_mAP_points"] is None]
    if unknown_delta:
        notes.append(f"Δ mAP unknown (no FP32 reference in the verification): {', '.join(unknown_delta)}")
    failed = [row["label"] for row in group.rows if row["verification_passed"] is False]
    if failed:
        notes.append(f"outside its verification's mAP tolerance against FP32: {', '.join(failed)}")
    off_target = [point["label"] for point in group.plot["points"] if not point["on_target"]]
    if off_target:
        notes.append("† latency not measured on the backend the model is built for (the INT8 model is laid out for "
                     "TensorRT; ONNX Runtime only emulates its quantization), drawn hollow and left off the "
                     f"frontier: {', '.join(off_target)}")
    for entry in group.plot["not_plotted"]:
        notes.append(f"not plotted ({entry['reason']}): {entry['label']}")
    notes.append("latency: p50 of the timed iterations; throughput at the largest batch measured; FLOPs per image "
                 "(2 × multiply-accumulates); size: the file the backend loads")
    return notes


# --- rendering ---------------------------------------------------------------------------------------------------


def row_cells(row: dict[str, Any]) -> list[str]:
    def metric(value: float | None) -> str:
        return UNKNOWN if value is None else f"{value * 100:.2f} %"

    off_target = "" if measured_on_target(row["precision"], row["backend"]) else " †"

    def latency(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f} ms{off_target}"

    delta = row["delta_mAP_points"]
    mAP = metric(row["mAP"])
    if row["accuracy_backend"] and row["accuracy_backend"] != row["backend"]:
        mAP += f" ({ACCURACY_FALLBACK_BACKEND})"
    throughput = row["throughput_ips"]
    return [
        row["model_label"],
        UNKNOWN if row["params"] is None else f"{row['params'] / 1e6:.2f} M",
        UNKNOWN if row["flops"] is None else f"{row['flops'] / 1e9:.3f} G",
        row["precision"].upper(),
        row["backend"],
        mAP,
        metric(row["rank1"]),
        metric(row["mINP"]),
        UNKNOWN if delta is None else f"{delta:+.2f}",
        latency(row["latency_ms"]["b1"]),
        latency(row["latency_ms"]["b32"]),
        "–" if throughput is None else f"{throughput:.1f} img/s (b{row['throughput_batch']})",
        "–" if row["model_bytes"] is None else f"{row['model_bytes'] / 2**20:.1f} MiB",
    ]


def section_heading(group: ReportGroup) -> str:
    dataset = group.dataset
    if dataset is None:
        return "Benchmarks without a verification (accuracy unknown)"
    return (f"{dataset['name']}: {dataset['num_query']} query / {dataset['num_gallery']} gallery "
            f"(fingerprint {dataset['fingerprint'][:12]})")


def render_markdown(groups: Sequence[ReportGroup], pictures: Sequence[dict[str, str]] = ()) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["# edgereid report", ""]
    for group in groups:
        lines += [f"## {escape(section_heading(group))}", ""]
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
        lines += ["| " + " | ".join(escape(cell) for cell in row_cells(row)) + " |" for row in group.rows]
        lines += ["", f"![mAP against batch-1 latency]({group.plot['file']})", ""]
        lines += [f"- {escape(note)}" for note in group.notes]
        lines.append("")
    if pictures:
        lines += ["## Pictures", ""]
        for picture in pictures:
            bang = "!" if picture["file"].endswith(".png") else ""
            lines.append(f"- {bang}[{escape(picture['title'])}]({picture['file']})")
        lines.append("")
    return "\n".join(lines)


# The page fits a 1,280-pixel window: only the table scrolls sideways (inside its own box), the model column wraps.
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.table-scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; } td:first-child, th:first-child { text-align: left; }
td:first-child { white-space: normal; min-width: 12em; max-width: 22em; }
tr.frontier td { background: #fff0f0; font-weight: 600; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
li { overflow-wrap: anywhere; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; }
"""


def render_html(groups: Sequence[ReportGroup], out: Path, pictures: Sequence[dict[str, str]] = ()) -> str:
    """An HTML5 page (inline style, charts embedded as data URIs, no script); ``pictures`` are linked by their
    paths relative to ``out``."""
    body = []
    for group in groups:
        frontier = {point["label"] for point in group.plot["points"] if point["frontier"]}
        body.append(f"<h2>{html.escape(section_heading(group))}</h2>")
        header = "".join(f"<th scope=\"col\">{html.escape(column)}</th>" for column in COLUMNS)
        body.append(f'<div class="table-scroll">\n<table>\n<thead><tr>{header}</tr></thead>\n<tbody>')
        for row in group.rows:
            cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in row_cells(row))
            marker = ' class="frontier"' if row["label"] in frontier else ""
            body.append(f"<tr{marker}>{cells}</tr>")
        body.append("</tbody>\n</table>\n</div>")
        image = base64.b64encode((out / group.plot["file"]).read_bytes()).decode("ascii")
        body.append(f'<p><img src="data:image/png;base64,{image}" alt="mAP against batch-1 latency, '
                    f'{html.escape(section_heading(group), quote=True)}"></p>')
        body.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in group.notes) + "</ul>")
        if frontier:
            body.append("<p>Highlighted rows are on the Pareto frontier: no other variant is both faster at batch 1 "
                        "and more accurate.</p>")
    if pictures:
        body.append("<h2>Pictures</h2>")
        links = []
        for picture in pictures:
            target, title = html.escape(picture["file"], quote=True), html.escape(picture["title"])
            if picture["file"].endswith(".png"):
                body.append(f'<figure><a href="{target}"><img src="{target}" alt="{html.escape(picture["title"], quote=True)}">'
                            f"</a><figcaption>{title}</figcaption></figure>")
            else:
                links.append(f'<li><a href="{target}">{title}</a></li>')
        if links:
            body.append("<ul>" + "".join(links) + "</ul>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>edgereid report</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>edgereid report</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
