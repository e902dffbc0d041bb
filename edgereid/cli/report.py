"""`edgereid report`: verify and bench results in one table per data set, as Markdown, HTML and JSON, with an
mAP-against-latency Pareto chart, and training runs' curves (a thin wrapper over edgereid.report.table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from edgereid.cli._output import console, print_json

if TYPE_CHECKING:
    from edgereid.report.table import Report

# Backends as the terminal table names them, so that a variant's name fits an 80-column terminal.
BACKEND_SHORT = {"onnxruntime": "ORT", "tensorrt": "TRT", "torch": "torch"}
# Characters of a model's name in the terminal table before its middle is elided.
NAME_CHARS = 22


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Directory for report.md, report.html, report.json and the chart(s).")
@click.option("--group-by-dataset", is_flag=True,
              help="Results scored on different data sets: one table and chart per data set (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json's content.")
def report_command(results: tuple[Path, ...], out_dir: Path, group_by_dataset: bool, as_json: bool) -> None:
    """Join RESULTS (JSON written by `edgereid verify --out` and `edgereid bench --out`) into one table — model,
    params, FLOPs, precision, backend, mAP, Rank-1, mINP, Δ mAP vs FP32, latency at batch 1 and 32, throughput,
    size — and a Pareto chart of mAP against batch-1 latency. A training run directory among RESULTS gets its
    loss, learning-rate and mAP curves drawn into the report."""
    from edgereid.report.table import build_report

    report = build_report(results, out_dir, group_by_dataset=group_by_dataset)
    if as_json:
        print_json(report.document)
        return
    print_report(report)
    written = [report.markdown, report.html, report.json, *report.plots]
    console.print("wrote " + ", ".join(str(path) for path in written), highlight=False, soft_wrap=True)


def short_names(rows: list[dict[str, Any]]) -> tuple[dict[str, str], str | None]:
    """Each row's label shortened for a terminal, and the recipe all rows share (then left out of the names):
    ``student FP32 ORT`` for ``quickstart_mutual/student FP32 onnxruntime``."""
    recipes = {row["model"]["recipe"] for row in rows}
    shared = next(iter(recipes)) if len(recipes) == 1 else None
    names = {}
    for row in rows:
        model_name = row["label"].removesuffix(f" {row['precision'].upper()} {row['backend']}").split(" @ ")[0]
        if shared is not None and model_name.startswith(f"{shared}/"):
            model_name = model_name.removeprefix(f"{shared}/")
        if len(model_name) > NAME_CHARS:
            # The end of a name tells variants apart (a network, a bundle's folder) as often as its start.
            keep = NAME_CHARS - 1
            model_name = model_name[: keep - keep // 2] + "…" + model_name[-(keep // 2):]
        machine = row["label"].partition(" @ ")[2]
        names[row["label"]] = (f"{model_name} {row['precision'].upper()} "
                               f"{BACKEND_SHORT.get(row['backend'], row['backend'])}"
                               + (f" @{machine[:12]}" if machine else ""))
    return names, shared


def print_report(report: Report, out: Console | None = None) -> None:
    """The report's decisive columns per data set, within 80 columns, and its notes; every column is in
    report.md / report.html."""
    from edgereid.report.table import section_heading

    out = out or console
    for group in report.groups:
        names, shared = short_names(group.rows)
        title = section_heading(group) + (f"\nrecipe {shared}" if shared else "")
        table = Table("variant", "mAP %", "R-1 %", "ΔmAP", "b1 ms", "b32 ms", "img/s", title=title,
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for row in group.rows:
            table.add_row(names[row["label"]], *_compact_cells(row))
        out.print(table)
        for note in group.notes:
            out.print(f"• {note}", highlight=False)


def _compact_cells(row: dict[str, Any]) -> list[str]:
    from edgereid.report.plot import measured_on_target

    def percent(value: float | None) -> str:
        return "?" if value is None else f"{value * 100:.2f}"

    def milliseconds(value: float | None) -> str:
        if value is None:
            return "–"
        return f"{value:.2f}" + ("" if measured_on_target(row["precision"], row["backend"]) else "†")

    delta = row["delta_mAP_points"]
    throughput = row["throughput_ips"]
    return [
        percent(row["mAP"]) + ("*" if row["accuracy_backend"] and row["accuracy_backend"] != row["backend"] else ""),
        percent(row["rank1"]),
        "?" if delta is None else f"{delta:+.2f}",
        milliseconds(row["latency_ms"]["b1"]),
        milliseconds(row["latency_ms"]["b32"]),
        "–" if throughput is None else f"{throughput:.0f}",
    ]
