"""`edgereid data …`: make, inspect and list data sets."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click
from rich.progress import Progress
from rich.table import Table

from edgereid.cli._output import console, parse_options, print_json
from edgereid.data import available_formats, load_dataset, make_holdout
from edgereid.data.info import DatasetInfo, dataset_info
from edgereid.data.records import ReIDDataset
from edgereid.data.synthetic import SyntheticSummary, generate_synthetic
from edgereid.errors import DataError


@click.group()
def data() -> None:
    """Make, inspect and list ReID data sets."""


@data.command("formats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def formats(as_json: bool) -> None:
    """List the data set formats edgereid reads."""
    known = available_formats()
    if as_json:
        print_json(known)
        return
    table = Table("format", "layout")
    for name, description in known.items():
        table.add_row(name, description)
    console.print(table)


@data.command("info")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--format", "format_name", help="Data set format (detected from the layout when omitted).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Reader option, repeatable.")
@click.option("--holdout-ids", type=int, help="Cut a query/gallery protocol from train, holding out N identities.")
@click.option("--holdout-seed", type=int, help="Choose the held-out identities at random with this seed.")
@click.option("--verify", is_flag=True, help="Decode every image to find corrupt or truncated files.")
@click.option("--strict", is_flag=True, help="Make an unreadable image an error instead of a warning.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(
    root: Path,
    format_name: str | None,
    options: tuple[str, ...],
    holdout_ids: int | None,
    holdout_seed: int | None,
    verify: bool,
    strict: bool,
    as_json: bool,
) -> None:
    """Identities, cameras, images per split and image sizes of the data set at ROOT."""
    dataset = load_dataset(root, format_name, **parse_options(options))
    if holdout_ids is not None:
        dataset = _holdout(dataset, holdout_ids, holdout_seed)
    summary = dataset_info(dataset, verify_images=verify or strict, strict=strict)
    if as_json:
        print_json(summary.to_dict())
    else:
        _print_info(summary)


def _holdout(dataset: ReIDDataset, num_test_ids: int, seed: int | None) -> ReIDDataset:
    if dataset.query or dataset.gallery:
        raise DataError(f"'{dataset.root}' already has a query/gallery protocol; --holdout-ids is for train-only data")
    return make_holdout(dataset.train, num_test_ids=num_test_ids, seed=seed, name=f"{dataset.name}-holdout", root=dataset.root)


def _print_info(summary: DatasetInfo) -> None:
    table = Table(title=f"{summary.name}: {summary.root}")
    for column in ("split", "images", "identities", "cameras", "1-image ids", "sizes (HxW)", "unreadable"):
        table.add_column(column, justify="left" if column in ("split", "sizes (HxW)") else "right")
    for split, stats in summary.splits.items():
        sizes = ", ".join(f"{size} ×{count}" for size, count in list(stats.image_sizes.items())[:3])
        if len(stats.image_sizes) > 3:
            sizes += f", … ({len(stats.image_sizes)} sizes)"
        table.add_row(
            split,
            str(stats.images),
            str(stats.identities),
            str(stats.cameras),
            str(stats.single_image_identities),
            sizes,
            str(len(stats.unreadable)),
        )
    console.print(table)
    if summary.train_test_overlap:
        console.print(f"[yellow]{summary.train_test_overlap} identities appear in both train and test[/]")


def parse_size(value: str) -> tuple[int, int]:
    """'128x64' → (128, 64), height first like every size in edgereid."""
    height, sep, width = value.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 128x64")
    return int(height), int(width)


@data.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--ids", "num_ids", type=int, default=100, show_default=True, help="Identities (half train, half test).")
@click.option("--cameras", "num_cameras", type=int, default=4, show_default=True, help="Cameras.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--size", default="128x64", show_default=True, help="Image size HxW.")
@click.option("--per-camera", type=int, default=6, show_default=True, help="Images per identity and camera.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it already holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def synth(
    out: Path, num_ids: int, num_cameras: int, seed: int, size: str, per_camera: int, overwrite: bool, as_json: bool
) -> None:
    """Write a synthetic ReID data set in the Market-1501 layout to OUT."""
    summary = make_synthetic(out, num_ids, num_cameras, seed, parse_size(size), per_camera, overwrite, quiet=as_json)
    if as_json:
        print_json({**asdict(summary), "out_dir": str(summary.out_dir)})
        return
    console.print(
        f"wrote {summary.total_images} images ({', '.join(f'{n} {s}' for s, n in summary.images.items())}) "
        f"to {summary.out_dir} in {summary.elapsed_s:.1f} s"
    )


def make_synthetic(
    out: Path,
    num_ids: int,
    num_cameras: int,
    seed: int,
    size: tuple[int, int],
    per_camera: int = 6,
    overwrite: bool = False,
    *,
    quiet: bool = False,
) -> SyntheticSummary:
    """`generate_synthetic` with a rich progress bar (none when ``quiet``)."""
    with Progress(*Progress.get_default_columns(), transient=True, console=console, disable=quiet) as progress:
        task = progress.add_task("generating synthetic data", total=None)
        return generate_synthetic(
            out,
            num_ids=num_ids,
            num_cameras=num_cameras,
            seed=seed,
            size=size,
            images_per_id_per_camera=per_camera,
            overwrite=overwrite,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
