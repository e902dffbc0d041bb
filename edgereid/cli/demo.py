"""`edgereid demo`: the README's main job, end to end on built-in synthetic data through every stage that exists."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgereid.cli._output import console, require_extra
from edgereid.cli.data import _print_info, make_synthetic
from edgereid.data import load_dataset
from edgereid.data.info import dataset_info

# --quick (CI): a smaller data set and a few iterations, to prove the path rather than the model.
QUICK_OVERRIDES = ("data.synthetic.ids=24", "solver.epochs=1", "solver.iters_per_epoch=3")
QUICK_PRECISIONS = ("fp32",)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--quick", is_flag=True, help="A reduced run for CI: fewer identities, a few iterations.")
@click.option(
    "--recipe",
    "recipe_name",
    type=click.Choice(["quickstart", "quickstart_mutual"]),
    default="quickstart",
    show_default=True,
    help="quickstart_mutual trains two networks together (mutual learning) and evaluates each.",
)
def demo(out: Path, quick: bool, recipe_name: str) -> None:
    """Run the whole path on synthetic data: data → train → evaluate → export and verify (→ runtime → report)."""
    require_extra("torch", "train", "demo")
    from edgereid.cli.export import print_bundle
    from edgereid.export import export_checkpoint
    from edgereid.recipes import load_recipe
    from edgereid.training import evaluate_checkpoint, train

    data_root = out / "data"
    overrides = [f"data.root={data_root}", f"train.output_dir={out / 'runs' / '{name}'}"]
    recipe = load_recipe(recipe_name, [*overrides, *(QUICK_OVERRIDES if quick else ())])
    synthetic = recipe.data.synthetic
    assert synthetic is not None, "the quickstart recipe generates its data"

    console.rule("[bold]1. synthetic data")
    summary = make_synthetic(
        data_root, synthetic.ids, synthetic.cameras, synthetic.seed, synthetic.size,
        synthetic.images_per_id_per_camera, overwrite=True,
    )
    console.print(f"{summary.total_images} images in {summary.elapsed_s:.1f} s → {data_root}")
    _print_info(dataset_info(load_dataset(data_root, "market1501")))

    networks = ", ".join(f"{name}: {config.backbone.name}" for name, config in recipe.networks().items())
    console.rule(f"[bold]2. train: recipe {recipe.name} ({networks}, {recipe.solver.epochs} epochs)")
    result = train(recipe, console=console)

    console.rule("[bold]3. evaluate the checkpoint (flip test)")
    for name in recipe.networks():
        report = evaluate_checkpoint(result.last_checkpoint, flip=True, device=recipe.train.device, network=name)
        table = Table("metric", "value", title=f"{result.last_checkpoint} ({name})")
        metrics = report.to_dict()
        for key in ("mAP", "rank1", "rank5", "mINP"):
            table.add_row(key, f"{metrics[key]:.2%}")
        table.add_row("queries / gallery", f"{report.num_query} / {report.num_gallery}")
        console.print(table)

    console.rule("[bold]4. export: fold BN, ONNX FP32 / FP16 / INT8, verified in ONNX Runtime")
    bundle = export_checkpoint(
        result.last_checkpoint,
        out / "bundle",
        precisions=QUICK_PRECISIONS if quick else ("fp32", "fp16", "int8"),
        overwrite=True,
        verify=True,
        calibration_images=64 if quick else 512,
    )
    print_bundle(bundle)

    console.rule("[bold]done")
    console.print(
        f"outputs are in {out.resolve()}: data/, runs/{recipe.name}*/ (recipe.yaml, metrics.jsonl, last.pt), "
        "bundle/ (ONNX models, manifest.json); the TensorRT runtime and reports join this demo as they land"
    )
