"""boxmot ReID weight files (``<arch>_<dataset>.pt``) → an edgereid checkpoint.

boxmot's ReID networks are torchreid's (same module and key names), and it picks the architecture from the file
name: the first of its model types that occurs in the name, in boxmot's order (``osnet_x0_25_msmt17.pt`` →
``osnet_x0_25``); no type is part of another, so that is also the longest (``mobilenetv2_x1_4_market1501.pt`` →
``mobilenetv2_x1_4``). ``arch`` overrides that. The weights then take the torchreid path (``importers.torchreid``).
"""

from __future__ import annotations

from pathlib import Path

from edgereid.errors import ConfigError
from edgereid.importers.common import DataSource, ImportResult, Preprocessing
from edgereid.importers.torchreid import check_arch, import_torchreid

LIBRARY = "boxmot"
# boxmot's model types in the order it tries them against a file name.
BOXMOT_MODEL_TYPES = (
    "resnet50", "resnet101", "mlfn", "hacnn", "mobilenetv2_x1_0", "mobilenetv2_x1_4", "osnet_x1_0", "osnet_x0_75",
    "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0", "osnet_ain_x1_0", "lmbn_n", "clip",
)


def arch_from_filename(path: Path) -> str:
    """The architecture boxmot reads from ``path``'s name; a ConfigError naming the file when none matches."""
    name = Path(path).name
    arch = next((model_type for model_type in BOXMOT_MODEL_TYPES if model_type in name), None)
    if arch is None:
        raise ConfigError(
            f"boxmot weights '{path}': the file name names no boxmot architecture; expected one of "
            f"{', '.join(BOXMOT_MODEL_TYPES)} in it (e.g. osnet_x0_25_msmt17.pt), or give --arch"
        )
    return arch


def import_boxmot(
    weights: Path,
    out: Path,
    *,
    arch: str | None = None,
    preprocessing: Preprocessing | None = None,
    data: DataSource | None = None,
) -> ImportResult:
    """Import a boxmot ReID weight file; ``arch`` overrides the architecture read from its name."""
    weights = Path(weights)
    chosen = arch if arch is not None else arch_from_filename(weights)
    source = "--arch" if arch is not None else f"the file name '{weights.name}'"
    if chosen not in BOXMOT_MODEL_TYPES and arch is not None:
        raise ConfigError(
            f"boxmot architecture '{chosen}' (from --arch) is not a boxmot model type; expected one of "
            f"{', '.join(BOXMOT_MODEL_TYPES)}"
        )
    check_arch(chosen, where=f"boxmot architecture (from {source})")
    return import_torchreid(
        chosen,
        weights,
        out,
        preprocessing=preprocessing,
        library=LIBRARY,
        extra_provenance={"arch_from": "--arch" if arch is not None else "file name"},
        data=data,
    )
