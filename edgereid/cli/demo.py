"""`edgereid demo`: the README's main job, end to end on built-in synthetic data through every stage that exists."""

from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli._output import console
from edgereid.cli.data import _print_info, make_synthetic
from edgereid.data import load_dataset
from edgereid.data.info import dataset_info


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--quick", is_flag=True, help="A reduced run for CI: fewer identities.")
def demo(out: Path, quick: bool) -> None:
    """Run the whole path on synthetic data: data → (train → export → verify → search → report, as they land)."""
    data_root = out / "data"
    console.rule("[bold]1. synthetic data")
    summary = make_synthetic(data_root, 24 if quick else 100, 4, 0, (128, 64), overwrite=True)
    console.print(f"{summary.total_images} images in {summary.elapsed_s:.1f} s → {data_root}")
    _print_info(dataset_info(load_dataset(data_root, "market1501")))
    console.rule("[bold]done")
    console.print(f"outputs are in {out.resolve()}; training, export and reports join this demo as they land")
