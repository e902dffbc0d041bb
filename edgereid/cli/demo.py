"""`edgereid demo`: the README's main job, end to end on built-in synthetic data (a thin wrapper over
edgereid.demo.run_demo)."""

from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli._output import console, require_extra
from edgereid.demo import DEFAULT_RECIPE


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--quick", is_flag=True, help="A reduced run for CI: fewer identities, a few iterations, small benches.")
@click.option(
    "--recipe",
    "recipe_name",
    type=click.Choice(["quickstart_mutual", "quickstart"]),
    default=DEFAULT_RECIPE,
    show_default=True,
    help="quickstart_mutual trains a plaincnn16 student with a plaincnn32 teacher (mutual learning); "
    "quickstart trains the plaincnn16 alone.",
)
@click.option("--device", default="auto", show_default=True, help="Training device: auto (a GPU when there is one), cpu, cuda.")
def demo(out: Path, quick: bool, recipe_name: str, device: str) -> None:
    """Run the whole path on synthetic data: data → mutual learning → evaluate → export FP32/FP16/INT8 → verify
    against FP32 → gallery and search → bench → accuracy-vs-latency report."""
    require_extra("torch", "train", "demo")
    from edgereid.demo import run_demo

    run_demo(out, quick=quick, recipe_name=recipe_name, device=device, console=console)
