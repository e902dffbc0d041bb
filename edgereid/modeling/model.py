"""The ReID model (backbone → head, optionally the AlignedReID local branch) and its factory."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from edgereid.errors import ConfigError
from edgereid.modeling.aligned import AlignedLocalBranch
from edgereid.modeling.backbones.base import Backbone
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.heads import EmbeddingHead
from edgereid.modeling.pretrained import load_pretrained
from edgereid.modeling.registry import get_backbone_builder


class ReIDModel(nn.Module):
    """``forward(images, targets=None)``: in training a dict with ``global_feat`` (B, C: the pre-BN feature for
    metric losses), ``bn_feat`` (after the neck), ``logits`` (B, num_classes; margin classifiers need
    ``targets``) and, with the local branch, ``local_feat`` (B, h, c); in eval the embedding (B, feature_dim).
    Inputs are normalised float B×3×H×W images."""

    def __init__(self, cfg: ModelConfig, backbone: Backbone, heads: EmbeddingHead,
                 local_branch: AlignedLocalBranch | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.heads = heads
        self.local_branch = local_branch
        self.feature_dim: int = heads.feature_dim

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        feature_map = self.backbone(images)
        outputs = self.heads(feature_map, targets)
        if isinstance(outputs, Tensor):
            return outputs
        if self.local_branch is not None:
            outputs["local_feat"] = self.local_branch(feature_map)
        return outputs

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        """Test-time features in any mode: ``embedding`` (B, feature_dim) and, with the local branch,
        ``local_feat`` (B, h, c) for ``test_distance: global+local``."""
        feature_map = self.backbone(images)
        global_feat, bn_feat = self.heads.embed(feature_map)
        features = {"embedding": bn_feat if self.heads.neck_feat == "after" else global_feat}
        if self.local_branch is not None:
            features["local_feat"] = self.local_branch(feature_map)
        return features


class TestEmbedding(nn.Module):
    """A model's test embedding as its whole forward, as ``edgereid eval`` computes it: the graph that is folded,
    quantized and exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        extract = getattr(self.model, "extract", None)
        if extract is not None:
            output: Tensor = extract(images)["embedding"]
            return output
        result: Tensor = self.model(images)
        return result


def create_model(cfg: ModelConfig, num_classes: int) -> ReIDModel:
    """Build the model ``cfg`` describes with a ``num_classes``-way identity classifier.

    ``backbone.pretrained`` as a path loads that file into the backbone (missing and unexpected keys are logged;
    a file that does not fit raises ConfigError); ``imagenet`` downloads torchvision/timm weights.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1 (the training identities), got {num_classes}")
    builder = get_backbone_builder(cfg.backbone.name)
    backbone = builder(cfg.backbone)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone builder '{cfg.backbone.name}' returned {type(backbone).__name__}, not a Backbone")
    if isinstance(cfg.backbone.pretrained, Path):
        load_pretrained(backbone, cfg.backbone.pretrained)
    heads = EmbeddingHead(cfg, backbone.channels, num_classes)
    local = None
    if cfg.local_branch is not None:
        local = AlignedLocalBranch(backbone.channels, cfg.local_branch.channels)
    return ReIDModel(cfg, backbone, heads, local)
