"""`edgereid export`: a checkpoint to a verified export bundle (a thin wrapper over edgereid.export)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from edgereid.cli._output import console, print_json, require_extra

if TYPE_CHECKING:
    from edgereid.export import ExportBundle


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="The bundle directory to write.")
@click.option("--fp16", is_flag=True, help="Also export an FP16 model (needs onnxconverter-common).")
@click.option("--int8", is_flag=True, help="Also export an INT8 Q/DQ model calibrated on train images (needs nvidia-modelopt).")
@click.option("--network", help="Which network of a mutual-learning checkpoint (default: its student).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Score every model with ONNX Runtime on the query/gallery against the PyTorch checkpoint.")
@click.option("--data", "data_root", type=click.Path(path_type=Path), help="Data set root to verify on (default: the recipe's).")
@click.option("--max-images", type=click.IntRange(min=1), help="Verify on the first N query and N gallery images only.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=512, show_default=True,
              help="INT8 calibration images, drawn from the train split.")
@click.option("--calibration-seed", type=int, default=0, show_default=True)
@click.option("--opset", type=click.IntRange(min=13), default=17, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_command(
    checkpoint: Path,
    out_dir: Path,
    fp16: bool,
    int8: bool,
    network: str | None,
    verify: bool,
    data_root: Path | None,
    max_images: int | None,
    calibration_images: int,
    calibration_seed: int,
    opset: int,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Export CHECKPOINT (a .pt file or a run directory): fold BatchNorm, write ONNX (FP32, optionally FP16 and
    INT8) and manifest.json to --out, and verify with ONNX Runtime."""
    require_extra("torch", "train", "export")
    require_extra("onnxruntime", "export", "export")
    from edgereid.export import export_checkpoint

    precisions = ["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else [])
    bundle = export_checkpoint(
        checkpoint,
        out_dir,
        precisions=precisions,
        network=network,
        opset=opset,
        overwrite=overwrite,
        verify=verify,
        data_root=data_root,
        max_images=max_images,
        calibration_images=calibration_images,
        calibration_seed=calibration_seed,
    )
    if as_json:
        print_json({"bundle": str(bundle.path), **bundle.manifest})
        return
    print_bundle(bundle)
    verification = bundle.manifest.get("verification") or {}
    if verification and not verification["passed"]:
        raise SystemExit(1)


def print_bundle(bundle: ExportBundle) -> None:
    """The bundle's models with their verified accuracy against PyTorch, as a table."""
    manifest = bundle.manifest
    verification: dict[str, Any] = manifest.get("verification") or {}
    scores: dict[str, Any] = verification.get("precisions", {})
    title = f"{bundle.path}: {manifest['backbone']} ({manifest['network']}), {manifest['input']['height']}×" \
            f"{manifest['input']['width']}, D={manifest['output']['feature_dim']}"
    table = Table("precision", "file", "size", "mAP", "Δ vs PyTorch", "cosine min", title=title)
    for precision, entry in manifest["models"].items():
        score = scores.get(precision)
        if score is None:
            mAP = delta = "-"
            cosine = f"{manifest['parity_random_input'][precision]['cosine_min']:.6f} (random input)"
        else:
            mAP = f"{score['mAP']:.2%}"
            delta = f"{score['delta_mAP_points']:+.2f} pts"
            cosine = f"{score['cosine_min']:.6f}"
        table.add_row(precision, entry["file"], _size(entry["bytes"]), mAP, delta, cosine)
    console.print(table)
    if verification:
        reference = verification["torch"]
        status = "[green]passed[/]" if verification["passed"] else "[bold red]FAILED[/]"
        console.print(
            f"PyTorch mAP {reference['mAP']:.2%} on {verification['num_query']} queries / "
            f"{verification['num_gallery']} gallery images; verification {status}"
        )
