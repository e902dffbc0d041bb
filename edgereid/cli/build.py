"""`edgereid build`: TensorRT engines of a bundle's ONNX models, written into the bundle (a thin wrapper over
edgereid.export.engine)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgereid.bundle_format import load_bundle
from edgereid.cli._output import console, print_json
from edgereid.errors import ConfigError
from edgereid.export.dla import describe_placement
from edgereid.export.engine import (
    DEFAULT_BATCH,
    DEFAULT_WORKSPACE_MB,
    DLA_PRECISIONS,
    ENGINE_PRECISIONS,
    build_engine,
    parse_batch,
)


def _batch_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    try:
        return parse_batch(value)
    except ConfigError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


@click.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", "precisions", type=click.Choice(ENGINE_PRECISIONS), multiple=True,
              help="A precision to build (repeatable; default: every one of fp32, fp16, int8 the bundle has; with "
                   "--dla-core, every one of fp16, int8).")
@click.option("--batch", default=":".join(map(str, DEFAULT_BATCH)), show_default=True, callback=_batch_option,
              metavar="MIN:OPT:MAX", help="The batch range the engine accepts, tuned for OPT; N alone fixes it.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=DEFAULT_WORKSPACE_MB,
              show_default=True, metavar="MB", help="Scratch memory TensorRT's tactics may use.")
@click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False),
              help="Read tactic timings from this file when it exists and write them back: rebuilds take seconds.")
@click.option("--dla-core", type=click.IntRange(min=0),
              help="Build for this DLA core of a Jetson Orin (fp16/int8 models, fixed --batch; GPU fallback on; "
                   "TensorRT 10.3-10.7, as on JetPack 6, or 11.4.1 on).")
@click.option("--version-compatible", is_flag=True,
              help="An engine later TensorRT versions can load (possibly slower).")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's engine entries as JSON.")
def build_command(
    bundle: Path,
    precisions: tuple[str, ...],
    batch: tuple[int, int, int],
    workspace_mb: int,
    timing_cache: Path | None,
    dla_core: int | None,
    version_compatible: bool,
    device: int,
    as_json: bool,
) -> None:
    """Build a TensorRT engine of each of BUNDLE's models on this machine's GPU and record it in the bundle. An
    engine runs only on the GPU architecture and TensorRT version that built it: build on the target (a Jetson)."""
    loaded = load_bundle(bundle)
    # The DLA computes FP16 and INT8 only: by default a DLA build takes the bundle's fp16 and int8 models (an
    # explicit --precision fp32 is refused by build_engine, saying so).
    default = DLA_PRECISIONS if dla_core is not None else ENGINE_PRECISIONS
    wanted = list(precisions) or [precision for precision in default if precision in loaded.precisions]
    if not wanted:
        raise ConfigError(
            f"'{bundle}' has no fp16 or int8 model (it has {', '.join(loaded.precisions)}), and the DLA runs only those: "
            f"re-export it with --fp16 and/or --int8, or build without --dla-core"
        )
    for precision in wanted:
        build_engine(
            loaded,
            precision,
            batch=batch,
            workspace_mb=workspace_mb,
            timing_cache=timing_cache,
            dla_core=dla_core,
            version_compatible=version_compatible,
            device=device,
        )
    engines = load_bundle(bundle).engines
    built = {precision: engines[precision] for precision in wanted}
    if as_json:
        print_json({"bundle": str(bundle), "engines": built})
        return
    table = Table("precision", "file", "size", "batch", "TensorRT", "GPU", "build s", title=f"{bundle}: engines")
    for precision, entry in built.items():
        options = entry["options"]
        limits = options["batch"]
        gpu = f"{entry['gpu']} (sm_{entry['compute_capability'].replace('.', '')})"
        if "dla" in entry:
            gpu += f", {describe_placement(entry['dla'])}"
        elif options["dla_core"] is not None:
            gpu += f", DLA {options['dla_core']}"
        table.add_row(
            precision,
            entry["file"],
            f"{entry['bytes'] / 2**20:.1f} MiB",
            f"{limits['min']}:{limits['opt']}:{limits['max']}",
            entry["tensorrt_version"] + (" (version-compatible)" if options["version_compatible"] else ""),
            gpu,
            f"{options['build_s']:.1f}",
        )
    console.print(table)
    for precision, entry in built.items():
        fallback = entry.get("dla", {}).get("gpu_fallback", [])
        if fallback and entry["dla"]["layers_on_dla"]:
            console.print(f"{precision}: on the GPU instead of the DLA: {', '.join(fallback)}")
