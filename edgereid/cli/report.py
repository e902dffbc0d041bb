"""`edgereid report`: verify and bench results in one table per data set, as Markdown, HTML and JSON, with an
mAP-against-latency Pareto chart (a thin wrapper over edgereid.report.table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from edgereid.cli._output import console, print_json

if TYPE_CHECKING:
    from edgereid.report.table import Report


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
    size — and a Pareto chart of mAP against batch-1 latency."""
    from edgereid.report.table import build_report

    report = build_report(results, out_dir, group_by_dataset=group_by_dataset)
    if as_json:
        print_json(report.document)
        return
    print_report(report)
    written = [report.markdown, report.html, report.json, *report.plots]
    console.print("wrote " + ", ".join(str(path) for path in written), highlight=False, soft_wrap=True)


def print_report(report: Report) -> None:
    """The report's decisive columns per data set, and its notes; every column is in report.md / report.html."""
    from edgereid.report.table import row_cells, section_heading

    for group in report.groups:
        table = Table("variant", "mAP", "Rank-1", "ΔmAP pts", "b1 p50", "b32 p50", "throughput",
                      title=section_heading(group))
        for row in group.rows:
            cells = row_cells(row)
            table.add_row(row["label"], *cells[5:7], *cells[8:12])
        console.print(table)
        for note in group.notes:
            console.print(f"• {note}", highlight=False)
