"""`edgereid verify`: a bundle's accuracy on a runtime backend against the FP32 ONNX Runtime reference (a thin
wrapper over edgereid.runtime.verify)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgereid.atomic import atomic_write_text
from edgereid.bundle_format import PRECISIONS
from edgereid.cli._data_options import data_selection, data_selection_options
from edgereid.cli._output import console, format_delta, parse_options, print_evaluation_warnings, print_json
from edgereid.runtime.runners import BACKENDS


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option("--precision", "precisions", type=click.Choice(PRECISIONS), multiple=True,
              help="A precision to verify (repeatable; default: every one the bundle has that the backend runs).")
@click.option("--data", "data_root", type=click.Path(path_type=Path),
              help="Query/gallery data set root (default: the one the bundle was verified on at export).")
@data_selection_options("--reader-option")
@click.option("--max-images", type=click.IntRange(min=1), help="Verify on the first N query and N gallery images only.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A backend option, e.g. -o providers=[cuda] -o threads=4 (onnxruntime), -o device=cuda (torch).")
@click.option("--json", "as_json", is_flag=True, help="Print the verification as JSON.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), help="Also write the verification JSON here.")
@click.option("--visualize", "visualize_dir", type=click.Path(path_type=Path),
              help="Also draw where each precision ranks differently from FP32 (ranked lists side by side, per-query "
              "AP differences, INT8 layer sensitivity) and an index.html here.")
def verify_command(
    bundle: Path,
    backend: str,
    precisions: tuple[str, ...],
    data_root: Path | None,
    data_format: str | None,
    data_options: tuple[str, ...],
    holdout_ids: int | None,
    holdout_seed: int | None,
    max_images: int | None,
    options: tuple[str, ...],
    as_json: bool,
    out_file: Path | None,
    visualize_dir: Path | None,
) -> None:
    """Embed the query/gallery with BUNDLE's models on --backend and check each precision's mAP against the FP32
    model on ONNX Runtime CPU; exits 1 when a precision is outside its tolerance."""
    from edgereid.runtime.verify import verify_runtime

    data = data_selection(data_root, data_format, data_options, holdout_ids, holdout_seed)
    runner_options = parse_options(options)
    result = verify_runtime(
        bundle, backend, precisions=list(precisions) or None, data=data, max_images=max_images, **runner_options
    )
    if out_file is not None:
        atomic_write_text(out_file, json.dumps(result, indent=2, sort_keys=True) + "\n")
    if visualize_dir is not None:
        from edgereid.report.precision_diff import visualize_bundle

        result["visualization"] = str(visualize_bundle(
            bundle, visualize_dir, backend, precisions=list(precisions) or None, data=data, max_images=max_images,
            **runner_options,
        ))
    if as_json:
        print_json(result)
    else:
        print_verification(result)
        if visualize_dir is not None:
            console.print(f"pictures: {result['visualization']}", highlight=False, soft_wrap=True)
    if not result["passed"]:
        raise SystemExit(1)


def print_verification(result: dict[str, Any]) -> None:
    """Each precision's accuracy on the backend against the reference, as a table."""
    dataset = result["dataset"]
    height, width = result["input"]
    title = (
        f"{result['bundle']}: {result['backbone']} ({result['network']}), {height}×{width}, D={result['feature_dim']}"
        f" on {result['backend_detail']}"
    )
    # Rank-k, mINP and throughput are in the JSON; the table keeps to what decides, within 80 columns.
    table = Table("precision", "mAP", "ΔmAP pts [95 % CI]", "tol. pts", "cos min", "result", title=title)
    for precision, entry in result["results"].items():
        delta = entry["delta_mAP_points"]
        tolerance = entry["tolerance_mAP_points"]
        cosine = entry["cosine_min"]
        passed = entry["passed"]
        table.add_row(
            precision,
            f"{entry['mAP']:.2%}",
            "-" if delta is None else format_delta(delta, entry["delta_mAP_ci95_points"], decimals=3),
            "-" if tolerance is None else f"±{tolerance:g}",
            "-" if cosine is None else f"{cosine:.5f}",
            "-" if passed is None else ("[green]passed[/]" if passed else "[bold red]FAILED[/]"),
        )
    console.print(table)
    reference = result["reference"]
    against = (
        "no reference (onnxruntime is not installed): deltas unknown"
        if reference is None
        else f"reference FP32 on ONNX Runtime CPU: mAP {reference['mAP']:.2%}, ΔmAP intervals by paired bootstrap "
        "over the queries with a match"
    )
    status = "[green]passed[/]" if result["passed"] else "[bold red]FAILED[/]"
    flip = ", flip test" if result["flip"] else ""
    console.print(
        f"{dataset['name']} at {dataset['root']}: {dataset['num_query']:,} queries ({result['num_valid_queries']:,} "
        f"with a match) / {dataset['num_gallery']:,} gallery{flip}; {against}; verification {status}"
    )
    print_evaluation_warnings(result["results"])
