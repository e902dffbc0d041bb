"""The ``model`` section of a recipe: backbone, pooling, embedding head, classifier and the AlignedReID branch.

Defaults are BoT/FastReID's: ResNet-50 with last stride 1, average pooling, a BN-neck whose output is the test
feature, and a bias-free linear classifier.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgereid.errors import ConfigError

# The backbones built of torchvision's BasicBlock/Bottleneck, which `se` extends (timm's and others' are not).
_SE_BACKBONES = re.compile(r"(fastreid_)?resnet(18|34|50|101)|fastreid_resnext(50|101)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BackboneConfig(_Strict):
    name: str = "resnet50"
    # A local state-dict file (key maps for the known ImageNet files are applied), "imagenet" for the
    # torchvision/timm download, or None for random initialisation.
    pretrained: Literal["imagenet"] | Path | None = None
    # 1 keeps the last stage at the resolution of the one before (output stride 16), as BoT/FastReID.
    last_stride: Literal[1, 2] = 1
    # IBN-Net variants; ResNet family only ("b" only on the torchvision ResNets).
    ibn: Literal["a", "b"] | None = None
    # ResNet stages (1–4) that get FastReID's non-local blocks after their last blocks.
    non_local: list[Literal[1, 2, 3, 4]] = Field(default_factory=list)
    # FastReID's SE-ResNet: a squeeze-excitation block (reduction 16) before every residual addition. On the
    # torchvision-block ResNets (resnet18/34/50/101, fastreid_resnet*, fastreid_resnext*) only.
    se: bool = False

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        # Imported here: the registry pulls in the backbone modules (and torch) on first use.
        from edgereid.modeling.registry import available_backbones, unknown_backbone_message

        if value not in available_backbones():
            raise ValueError(unknown_backbone_message(value))
        return value

    @model_validator(mode="after")
    def _se_on_torchvision_resnets(self) -> BackboneConfig:
        if self.se and not _SE_BACKBONES.fullmatch(self.name):
            raise ValueError(
                f"se applies to the torchvision-block ResNets (resnet18/34/50/101, fastreid_resnet*, "
                f"fastreid_resnext*) only, not '{self.name}'; leave it out"
            )
        return self

    @field_validator("non_local")
    @classmethod
    def _unique_sorted(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"stages must be listed once each, got {value}")
        return sorted(value)


class HeadConfig(_Strict):
    # bnneck: BatchNorm1d on the pooled feature (BoT); linear: a Linear projection, no BN;
    # reduction: FastReID's 1×1 conv + BN + LeakyReLU (+ dropout) then a BN-neck.
    kind: Literal["bnneck", "linear", "reduction"] = "bnneck"
    embedding_dim: int | None = Field(None, ge=1)
    # The test feature: before or after the BN-neck.
    neck_feat: Literal["before", "after"] = "after"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _dim_fits_kind(self) -> HeadConfig:
        if self.kind in ("linear", "reduction") and self.embedding_dim is None:
            raise ValueError(f"kind '{self.kind}' projects to embedding_dim; set embedding_dim (e.g. 512)")
        return self


# (scale, margin) when the recipe leaves them out. Circle: FastReID's Base-SBS; ArcFace and CosFace: their papers.
CLASSIFIER_DEFAULTS: dict[str, tuple[float, float]] = {
    "linear": (1.0, 0.0),
    "arcface": (64.0, 0.5),
    "cosface": (64.0, 0.35),
    "circle": (64.0, 0.35),
}


class ClassifierConfig(_Strict):
    kind: Literal["linear", "arcface", "circle", "cosface"] = "linear"
    scale: float | None = Field(None, gt=0)
    margin: float | None = Field(None, ge=0)
    # ArcFace only: keep cos θ unchanged where θ + m would pass π/2 instead of FastReID's linear fallback.
    easy_margin: bool = False

    @model_validator(mode="after")
    def _fill_defaults(self) -> ClassifierConfig:
        scale, margin = CLASSIFIER_DEFAULTS[self.kind]
        if self.kind == "linear" and self.margin not in (None, 0.0):
            raise ValueError(f"a linear classifier has no margin, got margin {self.margin}; use arcface/cosface/circle")
        if self.easy_margin and self.kind != "arcface":
            raise ValueError(f"easy_margin applies to kind 'arcface' only, not '{self.kind}'")
        if self.kind == "arcface" and self.margin is not None and self.margin >= 3.14159:
            raise ValueError(f"arcface margin is an angle in radians below π, got {self.margin}")
        self.scale = scale if self.scale is None else self.scale
        self.margin = margin if self.margin is None else self.margin
        return self


class LocalBranchConfig(_Strict):
    """AlignedReID's local branch: horizontal stripes of the last map, each reduced to ``channels``."""

    channels: int = Field(128, ge=1)


class ModelConfig(_Strict):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    # avgmax: average + max (summed); clipavg: average clamped to [0, 1] (FastReID's AdaptiveAvgMaxPool and
    # ClipGlobalAvgPool).
    pooling: Literal["avg", "max", "avgmax", "clipavg", "gem", "gem_learnable", "attention"] = "avg"
    gem_p: float = Field(3.0, gt=0)
    head: HeadConfig = Field(default_factory=HeadConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    local_branch: LocalBranchConfig | None = None
    test_distance: Literal["global", "global+local"] = "global"
    # Fine-tuning: the weights of an edgereid checkpoint (a .pt file or a run directory; e.g. one `edgereid import`
    # wrote) loaded into this network before training. Its model must be this one; the classifier is kept where
    # its class count matches the training data's, else re-created. A resumed run takes its own weights instead.
    init_from: Path | None = None

    @model_validator(mode="after")
    def _local_distance_needs_branch(self) -> ModelConfig:
        if self.test_distance == "global+local" and self.local_branch is None:
            raise ValueError("test_distance 'global+local' needs local_branch (e.g. local_branch: {channels: 128})")
        return self


def parse_model_config(data: Mapping[str, Any] | None, key: str = "model") -> ModelConfig:
    """Validate the ``model`` section of a recipe; errors name the key path (``model.backbone.name``)."""
    try:
        return ModelConfig.model_validate(data or {})
    except ValidationError as error:
        lines = []
        for detail in error.errors():
            path = ".".join([key, *map(str, detail["loc"])])
            if detail["type"] == "value_error":
                lines.append(f"  {path}: {detail['ctx']['error']}")
            else:
                lines.append(f"  {path}: {detail['msg']}, got {detail['input']!r}")
        raise ConfigError("invalid model configuration:\n" + "\n".join(lines)) from None
