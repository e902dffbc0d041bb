"""`edgereid train` and `edgereid eval`: thin wrappers over edgereid.training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgereid.cli._data_options import data_selection, data_selection_options
from edgereid.cli._output import console, print_json, require_extra
from edgereid.errors import ConfigError


@click.command("train")
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value, e.g. solver.lr=1e-3.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this directory (or checkpoint).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: the recipe's train.device).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_command(recipe: str | None, overrides: tuple[str, ...], resume: Path | None, device: str | None, as_json: bool) -> None:
    """Train RECIPE (a YAML file or the name of a shipped recipe) into runs/NAME."""
    require_extra("torch", "train", "train")
    from edgereid.recipes import load_recipe
    from edgereid.training import train

    if recipe is None and resume is None:
        raise ConfigError("give a RECIPE to train or --resume RUN_DIR")
    if recipe is None and overrides:
        raise ConfigError("--set needs a RECIPE; a resumed run keeps its saved recipe")
    loaded = load_recipe(recipe, overrides) if recipe is not None else None
    result = train(loaded, resume=resume, device=device, show_progress=not as_json)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # Under torchrun, rank 0 reports for all.
    summary = {
        "run_dir": str(result.run_dir),
        "epochs": result.epochs,
        "iterations": result.iterations,
        "start_iteration": result.start_iteration,
        "last_checkpoint": str(result.last_checkpoint),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "best": result.best_metrics,
        "last": result.last_metrics,
        "elapsed_s": round(result.elapsed_s, 2),
    }
    if as_json:
        print_json(summary)
        return
    best = result.best_metrics
    scores = f"; best mAP {best['mAP']:.2%} (epoch {best['epoch']})" if best else ""
    trained = result.iterations - result.start_iteration
    resumed = f" (resumed at iteration {result.start_iteration}, now {result.iterations})" if result.start_iteration else ""
    console.print(
        f"[green]trained[/] {trained} iterations{resumed} in {result.elapsed_s:.0f} s{scores} → {result.run_dir}"
    )


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_root", type=click.Path(path_type=Path), help="Data set root (default: the recipe's).")
@data_selection_options("-o", "--option", "--reader-option")
@click.option("--flip/--no-flip", default=None, help="Average with the mirrored image's feature (default: recipe).")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--aqe", is_flag=True, help="Average query expansion.")
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default="cosine", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--network", help="Which network of a mutual-learning checkpoint (default: its student).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--visualize", "visualize_dir", type=click.Path(path_type=Path),
              help="Also draw ranked lists (query and top-k, correct/wrong/junk marked) and an index.html here.")
@click.option("--visualize-queries", default="worst,best,random", show_default=True,
              help="With --visualize: worst, best, random (4 queries each), query indices or query file names.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --visualize: gallery images per ranked list.")
def eval_command(
    checkpoint: Path,
    data_root: Path | None,
    data_format: str | None,
    data_options: tuple[str, ...],
    holdout_ids: int | None,
    holdout_seed: int | None,
    flip: bool | None,
    rerank: bool,
    aqe: bool,
    metric: str,
    device: str,
    batch_size: int,
    network: str | None,
    as_json: bool,
    visualize_dir: Path | None,
    visualize_queries: str,
    top_k: int,
) -> None:
    """Score CHECKPOINT (a .pt file or a run directory) on a query/gallery: mAP, CMC, mINP; with --visualize, draw
    ranked lists of chosen or worst/best/random queries too."""
    require_extra("torch", "train", "eval")
    from edgereid.training import evaluate_checkpoint

    settings: dict[str, Any] = {
        "data": data_selection(data_root, data_format, data_options, holdout_ids, holdout_seed),
        "flip": flip,
        "rerank": rerank,
        "aqe": aqe,
        "metric": "euclidean" if metric == "euclidean" else "cosine",
        "device": device,
        "batch_size": batch_size,
        "network": network,
    }
    index = None
    if visualize_dir is None:
        report = evaluate_checkpoint(checkpoint, **settings)
    else:
        from edgereid.report.visualize import evaluate_and_visualize

        selections = [part.strip() for part in visualize_queries.split(",") if part.strip()]
        queries: list[str | int] = [int(part) if part.isdigit() else part for part in selections]
        report, index = evaluate_and_visualize(checkpoint, visualize_dir, queries=queries, top_k=top_k,
                                               **settings)
    summary = report.to_dict()
    if index is not None:
        summary["visualization"] = str(index)
    if as_json:
        print_json(summary)
        return
    table = Table("metric", "value", title=f"{report.checkpoint} ({report.network}) on {report.data_root}")
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        if key in summary:
            table.add_row(key, f"{summary[key]:.2%}")
    table.add_row("queries / gallery", f"{report.num_query} / {report.num_gallery}")
    options = [name for name in ("flip", "rerank", "aqe") if summary[name]]
    table.add_row("options", ", ".join(options) or "none")
    console.print(table)
    if index is not None:
        console.print(f"ranked lists: {index}", highlight=False, soft_wrap=True)
