"""`edgereid export`: a checkpoint to a verified export bundle (a thin wrapper over edgereid.export)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from rich.table import Table

from edgereid.cli._data_options import data_selection, data_selection_options
from edgereid.cli._output import console, format_delta, print_evaluation_warnings, print_json, require_extra
from edgereid.export.bundle import DEFAULT_MAX_MAP_DROP, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

if TYPE_CHECKING:
    from edgereid.export import ExportBundle


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


class MapBudget(click.ParamType):
    """``--max-map-drop``: mAP points (at least 0), or ``none`` for plain post-training INT8 without the search."""

    name = "POINTS|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "none":
            return None
        try:
            points = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of mAP points nor 'none'", param, ctx)
        if not points >= 0:
            self.fail(f"{value!r}: the budget must be at least 0 mAP points (or 'none')", param, ctx)
        return points


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="The bundle directory to write.")
@click.option("--fp16", is_flag=True, help="Also export an FP16 model (needs onnxconverter-common).")
@click.option("--int8", is_flag=True, help="Also export INT8, calibrated on train images (see --target).")
@click.option("--target", type=click.Choice(["trt", "cpu", "both"]), default="trt", show_default=True,
              help="INT8 target: trt = Q/DQ for TensorRT (model.int8.onnx, needs nvidia-modelopt); cpu = ONNX "
                   "Runtime per-channel QDQ for CPUs (model.int8_cpu.onnx); both from one calibration set.")
@click.option("--calibration-method", type=click.Choice(["entropy", "max", "percentile"]), default="entropy",
              show_default=True, help="How activation ranges are chosen (percentile: cpu target only).")
@click.option("--calibration-policy", default="train-spread-v1", show_default=True,
              help="A shipped policy name (calibration/*.yaml) or a policy YAML file.")
@click.option("--max-map-drop", type=MapBudget(), default=str(DEFAULT_MAX_MAP_DROP), show_default=True,
              help="Hold post-training INT8 to this mAP-point budget against FP32 (also its verification "
                   "tolerance): on held-out train images, with a safety margin, the most sensitive layers stay in "
                   "float until it holds, or the export fails suggesting quantization-aware training. 'none': "
                   "plain INT8, no search (verification still applies the default tolerance).")
@click.option("--equalize/--no-equalize", default=None,
              help="Before INT8, rescale the channels between convolutions (same function) so that per-tensor "
                   "activation quantization keeps small channels. Default: for --target cpu, not for trt "
                   "(measured: docs/BENCHMARKS.md).")
@click.option("--bias-correction/--no-bias-correction", default=None,
              help="TensorRT target: correct each quantized convolution's bias for the mean error of rounding its "
                   "weights (measured on a MobileNetV2: -1.6 instead of -5.0 mAP points fully quantized). Default: "
                   "on for --target trt; the CPU target has none (it gained nothing measurable there).")
@click.option("--network", help="Which network of a mutual-learning checkpoint (default: its student).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Score every model with ONNX Runtime on the query/gallery against the PyTorch checkpoint.")
@click.option("--data", "data_root", type=click.Path(path_type=Path), help="Data set root to verify on (default: the recipe's).")
@data_selection_options("-o", "--reader-option")
@click.option("--max-images", type=click.IntRange(min=1), help="Verify on the first N query and N gallery images only.")
@click.option("--calibration-images", type=click.IntRange(min=1),
              help="INT8 calibration images, drawn from the train split (default: the policy's, 512).")
@click.option("--calibration-seed", type=int, help="Seed of the calibration draw (default: the policy's).")
@click.option("--calibration-cache", "calibration_cache_dir", type=click.Path(path_type=Path),
              help="Where decoded calibration sets and tensor ranges are cached (default ~/.cache/edgereid/calibration).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (17 for TensorRT 8.6 / JetPack 6.0).")
@click.option("--options", "options_file", type=click.Path(path_type=Path),
              help="Export options from a YAML file (the keys of edgereid.export.ExportOptions) or from a bundle, "
                   "whose manifest records the options it was exported with; options given here as flags override "
                   "them (--fp16/--int8/--target together give the precisions).")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --out directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_command(
    checkpoint: Path,
    out_dir: Path,
    fp16: bool,
    int8: bool,
    target: str,
    calibration_method: str,
    calibration_policy: str,
    max_map_drop: float | None,
    equalize: bool | None,
    bias_correction: bool | None,
    network: str | None,
    verify: bool,
    data_root: Path | None,
    data_format: str | None,
    data_options: tuple[str, ...],
    holdout_ids: int | None,
    holdout_seed: int | None,
    max_images: int | None,
    calibration_images: int | None,
    calibration_seed: int | None,
    calibration_cache_dir: Path | None,
    opset: int,
    options_file: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Export CHECKPOINT (a .pt file or a run directory): fold BatchNorm, write ONNX (FP32, optionally FP16 and
    INT8) and manifest.json to --out, and verify with ONNX Runtime."""
    require_extra("torch", "train", "export")
    require_extra("onnxruntime", "export", "export")
    from edgereid.export import export_checkpoint
    from edgereid.export.options import data_selection_fields, export_options, load_export_options
    from edgereid.export.precision import TARGETS

    precisions = ["fp32"] + (["fp16"] if fp16 else []) + (list(TARGETS[target]) if int8 else [])
    flags: dict[str, Any] = {
        "precisions": precisions, "network": network, "opset": opset, "verify": verify, "max_images": max_images,
        "calibration_images": calibration_images, "calibration_seed": calibration_seed,
        "calibration_method": calibration_method, "calibration_policy": calibration_policy,
        "calibration_cache_dir": calibration_cache_dir, "max_map_drop": max_map_drop, "equalize": equalize,
        "bias_correction": bias_correction,
        **data_selection_fields(data_selection(data_root, data_format, data_options, holdout_ids, holdout_seed)),
    }
    if options_file is None:
        options = export_options(**flags)
    else:  # the file's options, with only the flags the command line gave replacing them
        ctx = click.get_current_context()
        given = {name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
        given |= {"precisions"} if given & {"fp16", "int8", "target"} else set()
        options = load_export_options(options_file, {key: value for key, value in flags.items() if key in given})
    bundle = export_checkpoint(checkpoint, out_dir, options, overwrite=overwrite)
    if as_json:
        print_json({"bundle": str(bundle.path), **bundle.manifest})
        return
    print_bundle(bundle)
    verification = bundle.manifest.get("verification") or {}
    if verification and not verification["passed"]:
        raise SystemExit(1)


def print_bundle(bundle: ExportBundle) -> None:
    """The bundle's models as a table, then each one's verified accuracy against PyTorch: ΔmAP with its interval,
    one line per precision (the interval does not fit the table within 80 columns)."""
    manifest = bundle.manifest
    verification: dict[str, Any] = manifest.get("verification") or {}
    scores: dict[str, Any] = verification.get("precisions", {})
    title = f"{bundle.path}: {manifest['backbone']} ({manifest['network']}), {manifest['input']['height']}×" \
            f"{manifest['input']['width']}, D={manifest['output']['feature_dim']}"
    table = Table("precision", "file", "size", "cosine min to PyTorch", title=title)
    for precision, entry in manifest["models"].items():
        score = scores.get(precision)
        cosine = (
            f"{manifest['parity_random_input'][precision]['cosine_min']:.6f} (random input)"
            if score is None
            else f"{score['cosine_min']:.6f}"
        )
        table.add_row(precision, entry["file"], _size(entry["bytes"]), cosine)
    console.print(table)
    for precision, entry in manifest["models"].items():
        pairs = (entry.get("equalization") or {}).get("pairs")
        if pairs:
            console.print(f"{precision}: activations equalized between {len(pairs)} convolution pairs before INT8")
        accuracy = entry.get("accuracy")
        if not accuracy:
            if "accuracy" in entry:  # post-training INT8 exported without the search (QAT models have no entry)
                console.print(f"{precision}: no accuracy-aware search (--max-map-drop none): every layer in INT8, "
                              "judged by the verification alone")
            continue
        budget = f"budget {accuracy['max_mAP_drop_points']:.2f}"
        if accuracy.get("heldout_margin_points") is not None:  # bundles before the margin have the budget alone
            budget += (f", accepted on held-out at ≤ {accuracy['heldout_threshold_points']:.2f} after a "
                       f"{accuracy['heldout_margin_points']:.2f} margin")
        line = f"{precision}: held-out mAP drop vs FP32 {accuracy['drop_points_before']:+.2f} pts ({budget})"
        if accuracy["excluded_layers"]:
            kept = ", ".join(f"{layer['node']} (1-cos {layer['embedding_error']:.2e})"
                             for layer in accuracy["excluded_layers"])
            line += f" → {accuracy['drop_points_after']:+.2f} pts with the most sensitive layers in float: {kept}"
        console.print(line)
        if accuracy.get("heldout_saturated"):
            console.print(
                f"[yellow]warning[/]: {precision}: FP32 scores {accuracy['heldout']['fp32_mAP']:.1%} on the held-out "
                "train identities, too close to 100 % to resolve INT8 losses there; the search cannot see them, "
                "only the test-split verification can"
            )
    if verification:
        # Bundles exported before intervals were recorded have the delta alone and count every query.
        queries = verification.get("num_valid_queries", verification["num_query"])
        console.print(
            f"ONNX Runtime CPU against PyTorch (mAP {verification['torch']['mAP']:.2%}), {verification['num_gallery']:,}"
            " gallery images; Δ: ΔmAP in points [95 % paired bootstrap interval over the queries with a match]"
        )
        for precision, score in scores.items():
            delta = format_delta(score["delta_mAP_points"], score.get("delta_mAP_ci95_points"))
            tolerance = score["tolerance_mAP_points"]
            verdict = _verdict(score["passed"]) + ("" if tolerance is None else f" (±{tolerance:g})")
            console.print(f"  {precision:<9} mAP {score['mAP']:.2%}  Δ {delta} on {queries:,} queries  {verdict}")
        print_evaluation_warnings(scores)
        over = [precision for precision, score in scores.items()
                if precision.startswith("int8") and score["passed"] is False]
        if over and "quantization_aware" not in manifest:
            console.print(int8_over_budget_hint(manifest, over), soft_wrap=True, highlight=False)
        console.print(f"verification {_verdict(verification['passed'])}")


def int8_over_budget_hint(manifest: dict[str, Any], precisions: list[str]) -> str:
    """What to do when post-training INT8 fails its budget on the test split: quantization-aware training first."""
    from edgereid.export.sensitivity import qat_suggestion
    from edgereid.recipes.schema import DEFAULT_NETWORK

    network = manifest["network"] if manifest["network"] != DEFAULT_NETWORK else None
    qat = qat_suggestion(manifest["source"]["checkpoint"], manifest["recipe"], network)
    searched = all((manifest["models"][precision].get("accuracy") or {}).get("max_mAP_drop_points") is not None
                   for precision in precisions)
    fallback = ("" if searched else
                "; or hold it to its budget with layers kept in float (--max-map-drop, on by default)")
    return (f"{', '.join(precisions)}: post-training INT8 loses more than its budget on the test split. Train it "
            f"quantization-aware: {qat}, then export that run{fallback}; or try --calibration-method max, or a "
            "larger --max-map-drop")


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("[green]passed[/]" if passed else "[bold red]FAILED[/]")
