"""torchreid (deep-person-reid) weights → an edgereid checkpoint.

torchreid's model-zoo files are bare state dicts; its training checkpoints (``model.pth.tar-N``) wrap one under
``state_dict``, often with DataParallel's ``module.`` prefixes. Each supported architecture is expressed with an
edgereid backbone whose module names are torchreid's, so the weights map by prefix alone, and a head whose eval
output is torchreid's eval-mode output (its test feature ``v``):

- OSNets (``osnet_x*``, ``osnet_ibn_x1_0``, ``osnet_ain_x*``): ``osnet_*_fc512`` backbones (torchreid's network,
  average pooling and its 512-d ``fc`` inside), average pooling of the 1×1 map and the pre-neck feature
  (``neck_feat: before``).
- ResNet-50: torchvision's ResNet-50 (torchreid's has the same key names) with last stride 2, average pooling and
  the pre-neck feature.
- MobileNetV2 (``mobilenetv2_x1_0``, ``mobilenetv2_x1_4``): ``torchreid_mobilenetv2_*`` backbones (torchreid's
  network, not torchvision's) with last stride 2, average pooling and the pre-neck feature (1280-d, 1792-d).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereid.bundle_format import sha256_file
from edgereid.errors import ConfigError
from edgereid.importers.common import (
    DataSource,
    ImportResult,
    Preprocessing,
    build_model,
    load_mapped_weights,
    read_weights,
    write_checkpoint,
)
from edgereid.modeling.config import ModelConfig

LIBRARY = "torchreid"


@dataclass(frozen=True)
class _Arch:
    model: dict[str, Any]  # the edgereid `model` section
    prefix: str  # where torchreid's network sits in edgereid's state dict
    dropped: tuple[str, ...] = ("classifier.",)  # torchreid keys with no counterpart (its identity classifier)


def _pooled(backbone: dict[str, Any], prefix: str = "backbone.") -> _Arch:
    """torchreid's test feature: the backbone's map average-pooled, taken before edgereid's BN-neck."""
    return _Arch({"backbone": backbone, "pooling": "avg", "head": {"kind": "bnneck", "neck_feat": "before"}}, prefix)


_OSNETS = (
    "osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0",
    "osnet_ain_x1_0", "osnet_ain_x0_75", "osnet_ain_x0_5", "osnet_ain_x0_25",
)
_MOBILENETS = ("mobilenetv2_x1_0", "mobilenetv2_x1_4")
SUPPORTED: dict[str, _Arch] = {
    **{name: _pooled({"name": f"{name}_fc512"}) for name in _OSNETS},
    # torchreid's ResNet-50 and MobileNetV2 keep their output stride 32.
    "resnet50": _pooled({"name": "resnet50", "last_stride": 2}, "backbone.body."),
    **{name: _pooled({"name": f"torchreid_{name}", "last_stride": 2}) for name in _MOBILENETS},
}
# torchreid's other model-factory names: known to torchreid, not to this importer.
OTHER_TORCHREID = (
    "resnet18", "resnet34", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "resnet50_fc512",
    "se_resnet50", "se_resnet50_fc512", "se_resnet101", "se_resnext50_32x4d", "se_resnext101_32x4d", "densenet121",
    "densenet169", "densenet201", "densenet161", "densenet121_fc512", "inceptionresnetv2", "inceptionv4",
    "xception", "resnet50_ibn_a", "resnet50_ibn_b", "nasnsetmobile", "shufflenet",
    "squeezenet1_0", "squeezenet1_0_fc512", "squeezenet1_1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "mudeep", "resnet50mid", "hacnn", "pcb_p6", "pcb_p4", "mlfn",
)


def check_arch(arch: str, where: str = "torchreid architecture") -> _Arch:
    """The import plan for ``arch``; a one-line ConfigError for a name edgereid cannot import."""
    if arch in SUPPORTED:
        return SUPPORTED[arch]
    supported = ", ".join(SUPPORTED)
    if arch in OTHER_TORCHREID:
        raise ConfigError(f"{where} '{arch}' is not supported by edgereid's importer; supported: {supported}")
    raise ConfigError(f"{where} '{arch}' is not a torchreid model name; expected one of: {supported}")


def import_torchreid(
    arch: str,
    weights: Path,
    out: Path,
    *,
    preprocessing: Preprocessing | None = None,
    library: str = LIBRARY,
    extra_provenance: dict[str, Any] | None = None,
    data: DataSource | None = None,
) -> ImportResult:
    """Import torchreid weights of architecture ``arch`` (a model-zoo ``.pth`` or a ``.pth.tar`` checkpoint) and
    write an edgereid checkpoint to ``out``. Nothing is written when anything does not fit."""
    plan = check_arch(arch)
    weights = Path(weights)
    state, _ = read_weights(weights, library)
    cfg = ModelConfig.model_validate(plan.model)
    classifier = state.get("classifier.weight")
    num_classes = int(classifier.shape[0]) if classifier is not None and classifier.dim() == 2 else 1
    model = build_model(cfg, num_classes)
    mapped = {plan.prefix + key: value for key, value in state.items() if not key.startswith(plan.dropped)}
    load_mapped_weights(
        model,
        mapped,
        path=weights,
        what=f"torchreid's {arch}",
        source_key=lambda key: key.removeprefix(plan.prefix),
        optional_prefixes=("heads.",),
    )
    provenance: dict[str, Any] = {
        "library": library,
        "arch": arch,
        "file": str(weights.resolve()),
        "sha256": sha256_file(weights),
        **(extra_provenance or {}),
    }
    return write_checkpoint(
        out,
        name=f"{arch}-imported",
        model=model,
        preprocessing=preprocessing or Preprocessing(),
        provenance=provenance,
        data=data,
    )
