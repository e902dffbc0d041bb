"""`edgereid import torchreid|fastreid|boxmot`: a model trained elsewhere → an ordinary edgereid checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgereid.cli._output import console, print_json, require_extra

_OUT = click.option("--out", "out", type=click.Path(path_type=Path), required=True,
                    help="The edgereid checkpoint to write (.pt).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _data_options(command: Any) -> Any:
    command = click.option("--format", "data_format",
                           help="The data set's format (default: detected).")(command)
    return click.option("--data", "data_root", type=click.Path(path_type=Path),
                        help="The data set the checkpoint's recipe names: INT8 calibration draws from its train "
                             "split; eval/verify use it without --data (default: none, give --data to them).")(command)


def _data(data_root: Path | None, data_format: str | None) -> Any:
    from edgereid.errors import ConfigError
    from edgereid.importers.common import DataSource

    if data_root is None:
        if data_format is not None:
            raise ConfigError("--format names the format of --data; give --data too")
        return None
    return DataSource(data_root, data_format)


def _preprocessing_options(command: Any) -> Any:
    command = click.option("--std", type=float, nargs=3, help="Normalisation std in [0, 1] units (default: ImageNet).")(
        command)
    command = click.option("--mean", type=float, nargs=3,
                           help="Normalisation mean in [0, 1] units (default: ImageNet).")(command)
    command = click.option("--size", type=click.IntRange(min=16), nargs=2, metavar="H W",
                           help="Input height and width (default: 256 128).")(command)
    return command


def _preprocessing(size: tuple[int, int] | None, mean: tuple[float, float, float] | None,
                   std: tuple[float, float, float] | None) -> Any:
    from edgereid.importers.common import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    return Preprocessing(size=tuple(size) if size else (256, 128),  # type: ignore[arg-type]
                         mean=tuple(mean) if mean else IMAGENET_MEAN,  # type: ignore[arg-type]
                         std=tuple(std) if std else IMAGENET_STD)  # type: ignore[arg-type]


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        print_json({
            "checkpoint": str(result.path),
            "model": result.model.model_dump(mode="json"),
            "preprocessing": {"size": list(result.preprocessing.size), "mean": list(result.preprocessing.mean),
                              "std": list(result.preprocessing.std)},
            "provenance": result.provenance,
            "notes": result.notes,
        })
        return
    provenance = result.provenance
    console.print(f"imported {provenance['library']} {provenance['arch']} ({Path(provenance['file']).name}, sha256 "
                  f"{provenance['sha256'][:12]}…) → {result.path}", highlight=False)
    size = result.preprocessing.size
    console.print(f"  input {size[0]}×{size[1]}, mean {result.preprocessing.mean}, std {result.preprocessing.std}; "
                  f"backbone {result.model.backbone.name}, embedding from `edgereid eval {result.path} --data ROOT`",
                  highlight=False)
    for note in result.notes:
        console.print(f"  note: {note}", highlight=False)


@click.group("import")
def import_group() -> None:
    """Import a model trained with FastReID, torchreid or shipped with boxmot as an edgereid checkpoint, which
    `edgereid eval`, `export`, `verify` and the rest take as they are. No pickled code is ever run."""


@import_group.command("torchreid")
@click.argument("arch")
@click.argument("weights", type=click.Path(path_type=Path))
@_OUT
@_preprocessing_options
@_data_options
@_JSON
def import_torchreid_command(arch: str, weights: Path, out: Path, size: tuple[int, int] | None,
                             mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
                             data_root: Path | None, data_format: str | None, as_json: bool) -> None:
    """torchreid weights of architecture ARCH: a model-zoo .pth or a .pth.tar checkpoint.

    ARCH: osnet_x1_0, osnet_x0_75, osnet_x0_5, osnet_x0_25, osnet_ibn_x1_0, osnet_ain_x1_0, osnet_ain_x0_75,
    osnet_ain_x0_5, osnet_ain_x0_25, resnet50, mobilenetv2_x1_0 or mobilenetv2_x1_4."""
    require_extra("torch", "train", "import")
    from edgereid.importers.torchreid import import_torchreid

    result = import_torchreid(arch, weights, out, preprocessing=_preprocessing(size, mean, std),
                              data=_data(data_root, data_format))
    _report(result, as_json)


@import_group.command("fastreid")
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("weights", type=click.Path(path_type=Path))
@_OUT
@_data_options
@_JSON
def import_fastreid_command(config: Path, weights: Path, out: Path, data_root: Path | None, data_format: str | None,
                            as_json: bool) -> None:
    """A FastReID Baseline model: the CONFIG.yaml its run dumped and its WEIGHTS (model_final.pth)."""
    require_extra("torch", "train", "import")
    from edgereid.importers.fastreid import import_fastreid

    _report(import_fastreid(config, weights, out, data=_data(data_root, data_format)), as_json)


@import_group.command("boxmot")
@click.argument("weights", type=click.Path(path_type=Path))
@click.option("--arch", help="The architecture (default: read from the file name, as boxmot does).")
@_OUT
@_preprocessing_options
@_data_options
@_JSON
def import_boxmot_command(weights: Path, arch: str | None, out: Path, size: tuple[int, int] | None,
                          mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
                          data_root: Path | None, data_format: str | None, as_json: bool) -> None:
    """A boxmot ReID weight file (e.g. osnet_x0_25_msmt17.pt)."""
    require_extra("torch", "train", "import")
    from edgereid.importers.boxmot import import_boxmot

    result = import_boxmot(weights, out, arch=arch, preprocessing=_preprocessing(size, mean, std),
                           data=_data(data_root, data_format))
    _report(result, as_json)
