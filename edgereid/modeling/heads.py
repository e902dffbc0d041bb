"""The embedding head: global pooling, the neck (BN-neck, linear or FastReID's reduction) and the classifier."""

from __future__ import annotations

from torch import Tensor, nn

from edgereid.errors import ConfigError
from edgereid.modeling.classifiers import build_classifier
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.layers.pooling import build_pooling


def _bn_neck(channels: int) -> nn.BatchNorm1d:
    """BoT's BN-neck: BN before the classifier, with the shift frozen at 0.

    A trainable bias would shift the features away from the origin, which hurts the cosine/ID loss geometry (BoT
    §3.5); FastReID freezes it the same way (``bias_freeze``).
    """
    bn = nn.BatchNorm1d(channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


class EmbeddingNeck(nn.Module):
    """Pooled B×C feature → (``global_feat``, ``bn_feat``): the features for metric and for ID losses."""

    def __init__(self, kind: str, in_channels: int, embedding_dim: int | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        self.project: nn.Module = nn.Identity()
        self.bn: nn.Module = nn.Identity()
        if kind == "bnneck":
            if embedding_dim not in (None, in_channels):
                raise ConfigError(
                    f"model.head.embedding_dim: {embedding_dim} differs from the backbone's {in_channels} channels, "
                    "but kind 'bnneck' does not project; leave embedding_dim out or use kind: reduction"
                )
            self.out_dim = in_channels
            self.bn = _bn_neck(in_channels)
        elif kind in ("linear", "reduction"):
            if embedding_dim is None:
                raise ConfigError(f"model.head.embedding_dim: kind '{kind}' needs an embedding_dim (e.g. 512)")
            self.out_dim = embedding_dim
            linear = nn.Linear(in_channels, embedding_dim, bias=kind == "linear")
            nn.init.kaiming_normal_(linear.weight, mode="fan_out")
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
            if kind == "linear":
                self.project = linear
            else:
                # FastReID's reduction: a 1×1 conv on the pooled 1×1 map (a Linear here) + BN + LeakyReLU(0.1).
                self.project = nn.Sequential(
                    linear, nn.BatchNorm1d(embedding_dim), nn.LeakyReLU(0.1, inplace=True), nn.Dropout(dropout)
                )
                self.bn = _bn_neck(embedding_dim)
        else:
            raise ConfigError(f"model.head.kind: unknown kind '{kind}'; expected bnneck, linear or reduction")

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        global_feat = self.project(pooled)
        return global_feat, self.bn(global_feat)


class EmbeddingHead(nn.Module):
    """Pooling + neck + classifier. Training: a dict of features and logits; eval: the test embedding only."""

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        head = cfg.head
        self.pool = build_pooling(cfg.pooling, in_channels, cfg.gem_p)
        self.neck = EmbeddingNeck(head.kind, in_channels, head.embedding_dim, head.dropout)
        self.feature_dim = self.neck.out_dim
        self.neck_feat = head.neck_feat
        # Reduction applies its dropout inside; the other necks apply it to the classifier's input.
        self.dropout = nn.Dropout(head.dropout) if head.kind != "reduction" and head.dropout > 0 else nn.Identity()
        self.classifier = build_classifier(cfg.classifier, self.feature_dim, num_classes)

    def embed(self, feature_map: Tensor) -> tuple[Tensor, Tensor]:
        return self.neck(self.pool(feature_map))

    def forward(self, feature_map: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        global_feat, bn_feat = self.embed(feature_map)
        if not self.training:
            return bn_feat if self.neck_feat == "after" else global_feat
        logits = self.classifier(self.dropout(bn_feat), targets)
        return {"global_feat": global_feat, "bn_feat": bn_feat, "logits": logits}
