"""FastReID (``config.yaml`` + ``model_final.pth``) → an edgereid checkpoint.

The ``Baseline`` meta-architecture as FastReID dumps its configuration: ResNet 18/34/50/101 with IBN-a, SE and
non-local blocks and ResNeXt 50/101 (32×4d) with IBN-a and non-local blocks (edgereid's ``fastreid_resnet*`` and
``fastreid_resnext*`` backbones: FastReID's stem pooling, IBN layers and non-local width), ResNeSt 50/101/200/269
(``fastreid_resnest*``: its last stride 1 by dilation), OSNet x1_0/x0_75/x0_5/x0_25 with and without IBN
(``osnet_*``/``osnet_ibn_*``: torchreid's OSNet without its fc, at output stride 16 whatever ``LAST_STRIDE`` says,
as FastReID's builder reads none), MobileNetV2 1.0x (tonylins' layout with the last 1×1 conv outside ``features``:
torchvision's network, edgereid's ``mobilenetv2``, at output stride 32, its builder reading no ``LAST_STRIDE``
either), the ``EmbeddingHead`` with average/max/average+max/clipped average/GeM/GeM-P pooling, the BN-neck and the
reduction to ``EMBEDDING_DIM``, last stride, ``INPUT.SIZE_TEST`` and ``MODEL.PIXEL_MEAN/PIXEL_STD`` (FastReID's
0–255 units, divided by 255 for edgereid's [0, 1] images). The ``WITH_*`` switches a FastReID builder does not read
(``WITH_SE`` for ResNeXt, all but ``WITH_IBN`` for OSNet, all of them for ResNeSt and MobileNetV2) are ignored, as
FastReID ignores them.

FastReID's eval output is always the feature after its neck (``NECK_FEAT`` only picks the training-time metric
feature), so the imported model's embedding is the post-neck feature. A reduction (``EMBEDDING_DIM > 0``) is a
bias-free 1×1 conv followed by the BN-neck: in eval mode both are one affine map, imported as edgereid's ``linear``
neck with the BN folded in (exact; fine-tuning then trains that Linear without a BN).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import Tensor

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
from edgereid.modeling.backbones.mobilenet import flat_v2_key_of_torchvision, torchvision_key_of_flat_v2
from edgereid.modeling.config import ModelConfig

LIBRARY = "fastreid"


_NON_LOCAL_KEY = "NL_"  # FastReID's non-local blocks, ``backbone.NL_<stage>.<index>``
# FastReID's MobileNetV2 keeps its last 1×1 conv as ``conv``, after the 18 modules of ``features``; torchvision's
# (edgereid's ``mobilenetv2``) has it as ``features.18``.
_FASTREID_MOBILENET_LAST_CONV = "conv."
_TORCHVISION_MOBILENET_LAST_CONV = "features.18."
# The one block of FastReID's and torchvision's MobileNetV2 without a 1×1 expansion conv (expansion 1).
_MOBILENET_UNEXPANDED_BLOCK = "features.1."


def _resnet_key(key: str) -> str:
    if key.startswith(_NON_LOCAL_KEY):
        stage, _, rest = key[len(_NON_LOCAL_KEY) :].partition(".")
        return f"non_local.stage{stage}.{rest}"
    return "body." + key


def _osnet_key(key: str) -> str:
    return key  # FastReID's OSNet keeps torchreid's module names, as edgereid's OSNet does


def _mobilenetv2_key(key: str) -> str:
    if key.startswith(_FASTREID_MOBILENET_LAST_CONV):
        return _TORCHVISION_MOBILENET_LAST_CONV + key[len(_FASTREID_MOBILENET_LAST_CONV) :]
    return torchvision_key_of_flat_v2(key, expanded=not key.startswith(_MOBILENET_UNEXPANDED_BLOCK))


class _Backbone(NamedTuple):
    depths: dict[str, str]  # MODEL.BACKBONE.DEPTH → edgereid's backbone
    options: tuple[str, ...]  # the MODEL.BACKBONE.WITH_* keys the builder reads; it ignores the others, as must we
    key: Callable[[str], str]  # a key under FastReID's ``backbone.`` → edgereid's under ``backbone.``
    # The edgereid last_stride of a builder that reads no LAST_STRIDE (its output stride is fixed).
    last_stride: int | None = None
    # WITH_IBN's backbones by DEPTH where IBN is a network of its own (OSNet's) rather than edgereid's ``ibn: a``.
    ibn_depths: dict[str, str] | None = None
    depth_note: str = ""  # why DEPTHs FastReID builds are missing from ``depths``


_OSNET_WIDTHS = ("x1_0", "x0_75", "x0_5", "x0_25")
# The ResNeXt builder has no 152x: no non-local counts for it, a KeyError in FastReID itself.
_BACKBONES = {
    "build_resnet_backbone": _Backbone(
        {"18x": "fastreid_resnet18", "34x": "fastreid_resnet34", "50x": "fastreid_resnet50",
         "101x": "fastreid_resnet101"}, ("WITH_IBN", "WITH_NL", "WITH_SE"), _resnet_key),
    "build_resnext_backbone": _Backbone({"50x": "fastreid_resnext50", "101x": "fastreid_resnext101"},
                                        ("WITH_IBN", "WITH_NL"), _resnet_key),
    "build_resnest_backbone": _Backbone(
        {"50x": "fastreid_resnest50", "101x": "fastreid_resnest101", "200x": "fastreid_resnest200",
         "269x": "fastreid_resnest269"}, (), _resnet_key),
    "build_osnet_backbone": _Backbone(
        {width: f"osnet_{width}" for width in _OSNET_WIDTHS}, ("WITH_IBN",), _osnet_key, last_stride=1,
        ibn_depths={width: f"osnet_ibn_{width}" for width in _OSNET_WIDTHS}),
    "build_mobilenetv2_backbone": _Backbone(
        {"1.0x": "mobilenetv2"}, (), _mobilenetv2_key, last_stride=2,
        depth_note="edgereid's mobilenetv2, torchvision's network, has width 1.0 only"),
}
_BACKBONES_SUPPORTED = (
    "ResNet 18/34/50/101, ResNeXt 50/101 32×4d, ResNeSt 50/101/200/269, OSNet x1_0/x0_75/x0_5/x0_25, MobileNetV2 1.0x"
)
_POOLING = {
    "GlobalAvgPool": "avg",
    "FastGlobalAvgPool": "avg",
    "GlobalMaxPool": "max",
    "AdaptiveAvgMaxPool": "avgmax",
    "ClipGlobalAvgPool": "clipavg",
    "GeneralizedMeanPooling": "gem",
    "GeneralizedMeanPoolingP": "gem_learnable",
}
_POOLING_MISSING = {
    "Identity": "the head needs a global pooling",
    "Flatten": "the head needs a global pooling",
}
_CLASSIFIERS = {"Linear": "linear", "ArcSoftmax": "arcface", "CircleSoftmax": "circle", "CosSoftmax": "cosface"}
_NORMS = ("BN", "syncBN", "GhostBN")
_EPS = 1e-5  # FastReID's BatchNorm eps (torch's default)


def _get(config: Mapping[str, Any], dotted: str, default: Any, path: Path) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            raise ConfigError(f"FastReID config '{path}': {dotted} is not a mapping path (at '{part}')")
        if part not in node:
            return default
        node = node[part]
    return node


def _refuse(path: Path, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"FastReID config '{path}': {key} {value!r} is not supported; expected {expected}")


def read_config(path: Path) -> dict[str, Any]:
    """The dumped FastReID configuration as a mapping (YAML only: nothing in it runs)."""
    if not path.is_file():
        raise ConfigError(f"FastReID config '{path}' does not exist; expected the config.yaml of the training run")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"FastReID config '{path}' is not YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(content, dict) or not isinstance(content.get("MODEL"), dict):
        raise ConfigError(f"FastReID config '{path}' has no MODEL section; expected the config.yaml FastReID dumps")
    if "_BASE_" in content:
        raise ConfigError(
            f"FastReID config '{path}': _BASE_ {content['_BASE_']!r} is not resolved; give the config.yaml FastReID "
            "dumps into its output directory (every key spelled out)"
        )
    return content


def model_from_config(config: Mapping[str, Any], path: Path) -> tuple[ModelConfig, Preprocessing, dict[str, Any]]:
    """The edgereid model section, the preprocessing and the head facts (embedding_dim, bnneck) for ``config``."""
    meta = _get(config, "MODEL.META_ARCHITECTURE", "Baseline", path)
    if meta != "Baseline":
        raise _refuse(path, "MODEL.META_ARCHITECTURE", meta,
                      "'Baseline' (MGN, MoCo, Distiller and other multi-branch models are not supported yet)")
    backbone = _get(config, "MODEL.BACKBONE.NAME", "build_resnet_backbone", path)
    if backbone not in _BACKBONES:
        raise _refuse(path, "MODEL.BACKBONE.NAME", backbone, f"one of {', '.join(_BACKBONES)} ({_BACKBONES_SUPPORTED}; "
                      "MobileNetV3, RegNet, EfficientNet, ShuffleNet, RepVGG and ViT are not supported yet)")
    builder = _BACKBONES[backbone]
    depth = str(_get(config, "MODEL.BACKBONE.DEPTH", "50x", path))
    if depth not in builder.depths:
        note = f" ({builder.depth_note})" if builder.depth_note else ""
        raise _refuse(path, "MODEL.BACKBONE.DEPTH", depth, f"one of {', '.join(builder.depths)} for {backbone}{note}")
    for key in ("MODEL.BACKBONE.NORM", "MODEL.HEADS.NORM"):
        norm = _get(config, key, "BN", path)
        if norm not in _NORMS:
            raise _refuse(path, key, norm, f"one of {', '.join(_NORMS)} (batch norm in eval mode)")
    last_stride = builder.last_stride or _get(config, "MODEL.BACKBONE.LAST_STRIDE", 1, path)
    if last_stride not in (1, 2):
        raise _refuse(path, "MODEL.BACKBONE.LAST_STRIDE", last_stride, "1 or 2")
    head = _get(config, "MODEL.HEADS.NAME", "EmbeddingHead", path)
    if head != "EmbeddingHead":
        raise _refuse(path, "MODEL.HEADS.NAME", head, "'EmbeddingHead'")
    pool = _get(config, "MODEL.HEADS.POOL_LAYER", "GlobalAvgPool", path)
    if pool not in _POOLING:
        reason = _POOLING_MISSING.get(pool, "not a FastReID pooling layer")
        raise _refuse(path, "MODEL.HEADS.POOL_LAYER", pool, f"one of {', '.join(_POOLING)} ({reason})")
    cls_layer = _get(config, "MODEL.HEADS.CLS_LAYER", "Linear", path)
    if cls_layer not in _CLASSIFIERS:
        raise _refuse(path, "MODEL.HEADS.CLS_LAYER", cls_layer, f"one of {', '.join(_CLASSIFIERS)}")
    embedding_dim = int(_get(config, "MODEL.HEADS.EMBEDDING_DIM", 0, path) or 0)
    with_bnneck = bool(_get(config, "MODEL.HEADS.WITH_BNNECK", False, path))

    def switched_on(option: str) -> bool:
        return option in builder.options and bool(_get(config, f"MODEL.BACKBONE.{option}", False, path))

    with_ibn = switched_on("WITH_IBN")
    ibn_depths = builder.ibn_depths if with_ibn else None
    backbone_cfg = {
        "name": (ibn_depths or builder.depths)[depth],
        "last_stride": last_stride,
        "ibn": "a" if with_ibn and builder.ibn_depths is None else None,
        "non_local": [2, 3] if switched_on("WITH_NL") and depth in ("50x", "101x") else [],
        "se": switched_on("WITH_SE"),
    }
    classifier: dict[str, Any] = {"kind": _CLASSIFIERS[cls_layer]}
    if cls_layer != "Linear":
        classifier |= {"scale": float(_get(config, "MODEL.HEADS.SCALE", 1, path)),
                       "margin": float(_get(config, "MODEL.HEADS.MARGIN", 0.0, path))}
    if embedding_dim > 0:
        head_cfg: dict[str, Any] = {"kind": "linear", "embedding_dim": embedding_dim, "neck_feat": "after"}
    else:
        head_cfg = {"kind": "bnneck", "neck_feat": "after" if with_bnneck else "before"}
    model = ModelConfig.model_validate({
        "backbone": backbone_cfg,
        "pooling": _POOLING[pool],
        "gem_p": 3.0,
        "head": head_cfg,
        "classifier": classifier,
    })
    size = _get(config, "INPUT.SIZE_TEST", [256, 128], path)
    mean = _get(config, "MODEL.PIXEL_MEAN", [0.485 * 255, 0.456 * 255, 0.406 * 255], path)
    std = _get(config, "MODEL.PIXEL_STD", [0.229 * 255, 0.224 * 255, 0.225 * 255], path)
    for key, value, count in (("INPUT.SIZE_TEST", size, 2), ("MODEL.PIXEL_MEAN", mean, 3), ("MODEL.PIXEL_STD", std, 3)):
        if not isinstance(value, list | tuple) or len(value) != count or not all(
            isinstance(item, int | float) and not isinstance(item, bool) for item in value
        ):
            raise _refuse(path, key, value, f"a list of {count} numbers")
    if min(std) <= 0:
        raise _refuse(path, "MODEL.PIXEL_STD", std, "positive values")
    preprocessing = Preprocessing(
        size=(int(size[0]), int(size[1])),
        mean=(mean[0] / 255.0, mean[1] / 255.0, mean[2] / 255.0),
        std=(std[0] / 255.0, std[1] / 255.0, std[2] / 255.0),
    )
    facts = {"backbone": backbone, "embedding_dim": embedding_dim, "with_bnneck": with_bnneck,
             "meta_architecture": meta, "pool_layer": pool,
             "neck_feat": _get(config, "MODEL.HEADS.NECK_FEAT", "before", path)}
    return model, preprocessing, facts


def _fold_reduction(state: dict[str, Tensor], with_bnneck: bool) -> dict[str, Tensor]:
    """FastReID's reduction (1×1 conv, then the BN-neck) as one Linear: ``heads.neck.project.weight/bias``."""
    conv = state["heads.bottleneck.0.weight"]
    weight = conv.reshape(conv.shape[0], -1).double()
    bias = torch.zeros(conv.shape[0], dtype=torch.float64)
    if with_bnneck:
        gamma = state["heads.bottleneck.1.weight"].double()
        beta = state["heads.bottleneck.1.bias"].double()
        mean = state["heads.bottleneck.1.running_mean"].double()
        var = state["heads.bottleneck.1.running_var"].double()
        scale = gamma / torch.sqrt(var + _EPS)
        weight = weight * scale[:, None]
        bias = beta - mean * scale
    return {"heads.neck.project.weight": weight.float(), "heads.neck.project.bias": bias.float()}


def _map_keys(state: Mapping[str, Tensor], facts: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """FastReID's keys → edgereid's, and edgereid's → FastReID's (to name keys in errors)."""
    mapped: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    reduction = facts["embedding_dim"] > 0
    backbone_key = _BACKBONES[facts["backbone"]].key
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):  # persistent in old FastReID versions; the config has them
            continue
        if key.startswith("backbone."):
            new = "backbone." + backbone_key(key[len("backbone.") :])
        elif key == "heads.pool_layer.p":
            new = "heads.pool.p"
        elif key == "heads.weight":
            new = "heads.classifier.weight"
        elif key.startswith("heads.bottleneck.") and not reduction:
            new = "heads.neck.bn." + key.split(".", 3)[3]
        elif key.startswith("heads.bottleneck.") and reduction:
            continue  # folded below
        else:
            new = key
        mapped[new] = value
        source[new] = key
    if reduction:
        needed = ["heads.bottleneck.0.weight"] + (
            [f"heads.bottleneck.1.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
            if facts["with_bnneck"] else []
        )
        absent = [key for key in needed if key not in state]
        if not absent:
            for new, value in _fold_reduction(dict(state), facts["with_bnneck"]).items():
                mapped[new] = value
                source[new] = "heads.bottleneck"
        else:
            source["heads.neck.project.weight"] = absent[0]
            source["heads.neck.project.bias"] = absent[-1]
    return mapped, source


def fastreid_key(key: str) -> str:
    """An edgereid key as FastReID names it (to name keys a file lacks; to write a FastReID file)."""
    if key.startswith("backbone.body."):
        return "backbone." + key[len("backbone.body.") :]
    if key.startswith("backbone.non_local.stage"):
        stage, _, rest = key[len("backbone.non_local.stage") :].partition(".")
        return f"backbone.{_NON_LOCAL_KEY}{stage}.{rest}"
    if key.startswith("backbone.features."):
        mobilenet_key = key[len("backbone.") :]
        if mobilenet_key.startswith(_TORCHVISION_MOBILENET_LAST_CONV):
            return "backbone." + _FASTREID_MOBILENET_LAST_CONV + mobilenet_key[len(_TORCHVISION_MOBILENET_LAST_CONV) :]
        expanded = not mobilenet_key.startswith(_MOBILENET_UNEXPANDED_BLOCK)
        return "backbone." + flat_v2_key_of_torchvision(mobilenet_key, expanded=expanded)
    renamed = {"heads.pool.p": "heads.pool_layer.p", "heads.classifier.weight": "heads.weight"}
    if key in renamed:
        return renamed[key]
    if key.startswith("heads.neck.bn."):
        return "heads.bottleneck.0." + key[len("heads.neck.bn.") :]
    if key.startswith("heads.neck.project."):
        return "heads.bottleneck"
    return key


def import_fastreid(config_path: Path, weights: Path, out: Path, *, data: DataSource | None = None) -> ImportResult:
    """Import a FastReID ``Baseline`` model (its dumped ``config.yaml`` and weights) into an edgereid checkpoint
    at ``out``. Nothing is written when the configuration or the weights do not fit."""
    config_path, weights = Path(config_path), Path(weights)
    config = read_config(config_path)
    cfg, preprocessing, facts = model_from_config(config, config_path)
    state, _ = read_weights(weights, LIBRARY)
    classifier = state.get("heads.weight")
    num_classes = int(classifier.shape[0]) if classifier is not None and classifier.dim() == 2 else 1
    model = build_model(cfg, num_classes)
    mapped, source = _map_keys(state, facts)
    # Parts with nothing to import: a fixed GeM's p (a config constant), the BN of a neck FastReID does not have.
    defaults = {"heads.pool.p"} if cfg.pooling == "gem" else set()
    if facts["embedding_dim"] == 0 and not facts["with_bnneck"]:
        defaults |= {key for key in model.state_dict() if key.startswith("heads.neck.bn.")}
    for key in defaults:
        mapped.setdefault(key, model.state_dict()[key])
    load_mapped_weights(
        model,
        mapped,
        path=weights,
        what=f"the FastReID model '{config_path}' describes ({cfg.backbone.name}, {facts['pool_layer']})",
        source_key=lambda key: source.get(key) or fastreid_key(key),
    )
    provenance: dict[str, Any] = {
        "library": LIBRARY,
        "arch": f"Baseline/{cfg.backbone.name}",
        "file": str(weights.resolve()),
        "sha256": sha256_file(weights),
        "config": str(config_path.resolve()),
        "config_sha256": sha256_file(config_path),
        "neck_feat": facts["neck_feat"],
    }
    notes = []
    if facts["embedding_dim"] > 0:
        notes.append("the reduction conv and BN-neck are folded into one Linear (exact in eval mode)")
    return write_checkpoint(
        out,
        name=f"fastreid-{cfg.backbone.name.removeprefix('fastreid_')}-imported",
        model=model,
        preprocessing=preprocessing,
        provenance=provenance,
        notes=notes,
        data=data,
    )
