"""What each trained network learns from in a step: its own recipe losses and, in mutual learning, its peers'
outputs (classification and metric mutual losses, peers detached), or, in distillation, a frozen teacher's
(logit KL, metric mutual loss, and optionally the embedding through a learned projection).

`TrainingObjective` returns one total per network: each depends only on that network's parameters (and the
student's projection), so one backward of their sum trains every network exactly as separate backwards would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgereid.errors import ConfigError, DataError
from edgereid.losses import ReIDCriterion
from edgereid.losses.metric import feature_distances
from edgereid.losses.mutual import distillation_kl_loss, kl_mutual_loss, metric_mutual_loss
from edgereid.modeling import ReIDModel, create_model
from edgereid.modeling.config import ModelConfig
from edgereid.recipes import Recipe
from edgereid.training.checkpoint import Checkpoint, load_checkpoint, load_model_state

Outputs = Mapping[str, Tensor]


def load_teacher(recipe: Recipe, class_pids: list[int], device: torch.device) -> ReIDModel:
    """The frozen teacher of ``recipe.teacher`` (``distill``, or QAT's FP32 network): in eval mode, without
    gradients, on ``device``.

    It must have been trained on the student's identities (its logits are compared class by class) at the
    student's input size; a checkpoint whose weights do not fit its own recipe is refused. QAT's FP32 network must
    be the recipe's model and not itself quantized.
    """
    distill = recipe.teacher
    assert distill is not None
    key = "qat.init" if recipe.qat is not None else "distill.teacher"
    try:
        checkpoint = load_checkpoint(distill.teacher)
    except DataError as error:
        raise DataError(f"{key}: {error}") from None
    name, config, _ = checkpoint.network(distill.teacher_network)
    where = f"{key} '{checkpoint.path}' (network {name!r})"
    if recipe.qat is not None:
        _check_qat_init(recipe, checkpoint, config, where)
    teacher_size, student_size = tuple(checkpoint.recipe.data.size), tuple(recipe.data.size)
    if teacher_size != student_size:
        raise ConfigError(
            f"{where} was trained at input size {teacher_size[0]}×{teacher_size[1]}, the student's data.size is "
            f"{student_size[0]}×{student_size[1]}; distillation needs the same input size"
        )
    if checkpoint.num_classes != len(class_pids):
        raise ConfigError(
            f"{where} classifies {checkpoint.num_classes} identities, the student's training data has "
            f"{len(class_pids)}; distillation compares logits class by class and needs the teacher's training data"
        )
    if checkpoint.class_pids != class_pids:
        raise ConfigError(
            f"{where} was trained on other identities than the student's training data (same count, "
            f"{len(class_pids)}); distillation needs the teacher's training data"
        )
    teacher = create_model(config, num_classes=checkpoint.num_classes)
    try:
        load_model_state(teacher, checkpoint, name)
    except DataError as error:
        raise DataError(f"{key}: {error}") from None
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def check_teacher(recipe: Recipe) -> None:
    """Refuse, before a run writes anything, a teacher (or QAT's FP32 checkpoint) that cannot teach the recipe's
    model on its data: what :func:`load_teacher` checks, on the train split's identities."""
    from edgereid.training.data import IdentityClasses, prepare_dataset

    if recipe.qat is not None:
        from edgereid.training.qat import require_modelopt

        require_modelopt()
    dataset = prepare_dataset(recipe.data)
    if not dataset.train:
        what = "quantization-aware training" if recipe.qat is not None else "distillation"
        raise DataError(f"data set '{recipe.data.root}' has no train split; {what} trains on train images")
    load_teacher(recipe, IdentityClasses.from_records(dataset.train).pids, torch.device("cpu"))


def _check_qat_init(recipe: Recipe, checkpoint: Checkpoint, config: ModelConfig, where: str) -> None:
    if checkpoint.quantization is not None:
        raise ConfigError(
            f"{where} is already quantization-aware trained; give the FP32 checkpoint it came from "
            f"('{checkpoint.quantization.init['checkpoint']}')"
        )
    # The weights a network started from (ImageNet's, another checkpoint's) do not change the network.
    differing = model_differences(recipe.model, config, {"backbone": {"pretrained"}, "init_from": True})
    if differing:
        raise ConfigError(
            f"{where} is not the recipe's model: model.{', model.'.join(differing)} differ; QAT fine-tunes the "
            "network the checkpoint holds, so give the recipe that checkpoint's model (`_base_:` its recipe)"
        )


def model_differences(mine: ModelConfig, theirs: ModelConfig, may_differ: dict[str, Any]) -> list[str]:
    """The key paths in which two model descriptions differ, leaving out ``may_differ`` (a pydantic exclude)."""
    return sorted(differing_keys(mine.model_dump(mode="json", exclude=may_differ),
                                 theirs.model_dump(mode="json", exclude=may_differ)))


def differing_keys(left: object, right: object, prefix: str = "") -> list[str]:
    """The dotted key paths where two nested dicts differ."""
    if isinstance(left, dict) and isinstance(right, dict):
        keys = set(left) | set(right)
        return [path for key in keys for path in differing_keys(left.get(key), right.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if left != right else []


@torch.no_grad()
def teacher_outputs(teacher: ReIDModel, images: Tensor) -> dict[str, Tensor]:
    """The training outputs of a frozen (eval-mode) model: ``global_feat``, ``bn_feat``, ``logits`` (without a
    margin classifier's margin, as at test time) and ``embedding``, the test feature."""
    feature_map = teacher.backbone(images)
    global_feat, bn_feat = teacher.heads.embed(feature_map)
    logits = teacher.heads.classifier(bn_feat, None)
    outputs = {"global_feat": global_feat, "bn_feat": bn_feat, "logits": logits}
    return {key: value.float() for key, value in outputs.items()}


def _embedding(model_outputs: Outputs, neck_feat: str) -> Tensor:
    return model_outputs["bn_feat"] if neck_feat == "after" else model_outputs["global_feat"]


class TrainingObjective:
    """``objective(outputs, targets, teacher=None) -> (totals, parts)``.

    ``outputs`` maps each trained network's name to its training outputs (the student first); ``teacher`` is
    ``teacher_outputs`` of the frozen teacher when distilling. ``totals`` maps each network to its loss to
    back-propagate; ``parts`` the weighted losses, detached, for logging: named as `ReIDCriterion` names them
    (``ce``, ``triplet``, …) plus ``kl``, ``metric_mutual`` and ``embedding``, suffixed ``/NAME`` when several
    networks train. ``projection`` (distillation with ``embedding_weight`` and differing embedding sizes) maps
    the student's embedding to the teacher's; it trains with the student and is never exported.
    """

    def __init__(
        self,
        recipe: Recipe,
        student_dim: int | None = None,
        teacher: ReIDModel | None = None,
    ) -> None:
        self.recipe = recipe
        self.criterion = ReIDCriterion(recipe.losses)
        self.normalize = recipe.losses.triplet.normalize
        self.projection: nn.Linear | None = None
        distill = recipe.teacher
        if distill is not None and teacher is None:
            raise ValueError("a distillation recipe needs its teacher")
        self.teacher_neck_feat = teacher.heads.neck_feat if teacher is not None else "after"
        if distill is not None and teacher is not None and distill.embedding_weight > 0:
            assert student_dim is not None
            if student_dim != teacher.feature_dim:
                if not distill.embedding_projection:
                    raise ConfigError(
                        f"distill.embedding_weight is above 0 and the student's embedding has {student_dim} "
                        f"dimensions, the teacher's {teacher.feature_dim}; set distill.embedding_projection: true "
                        "to learn a projection, or give both the same head.embedding_dim"
                    )
                self.projection = nn.Linear(student_dim, teacher.feature_dim)

    def __call__(
        self, outputs: Mapping[str, Outputs], targets: Tensor, teacher: Outputs | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        recipe, mutual, distill = self.recipe, self.recipe.mutual, self.recipe.teacher
        distances: dict[str, Tensor] = {}

        def global_distances(name: str, network_outputs: Outputs) -> Tensor:
            if name not in distances:
                distances[name] = feature_distances(network_outputs["global_feat"], self.normalize)
            return distances[name]

        totals: dict[str, Tensor] = {}
        parts: dict[str, Tensor] = {}
        for name, own in outputs.items():
            total, losses = self.criterion(own, targets)
            extra: dict[str, Tensor] = {}
            peers = [peer for peer in outputs if peer != name]
            if mutual is not None and peers:
                if mutual.kl_weight > 0:
                    kl = torch.stack(
                        [kl_mutual_loss(own["logits"], outputs[peer]["logits"], mutual.temperature) for peer in peers]
                    )
                    extra["kl"] = mutual.kl_weight * kl.mean()
                if mutual.metric_weight > 0:
                    dist = global_distances(name, own)
                    metric = torch.stack(
                        [metric_mutual_loss(dist, global_distances(peer, outputs[peer])) for peer in peers]
                    )
                    extra["metric_mutual"] = mutual.metric_weight * metric.mean()
            if distill is not None and teacher is not None:
                if distill.kl_weight > 0:
                    extra["kl"] = distill.kl_weight * distillation_kl_loss(
                        own["logits"], teacher["logits"], distill.temperature, distill.symmetric
                    )
                if distill.metric_weight > 0:
                    teacher_dist = feature_distances(teacher["global_feat"], self.normalize)
                    extra["metric_mutual"] = distill.metric_weight * metric_mutual_loss(
                        global_distances(name, own), teacher_dist
                    )
                if distill.embedding_weight > 0:
                    embedding = _embedding(own, recipe.model.head.neck_feat)
                    if self.projection is not None:
                        embedding = self.projection(embedding)
                    target = _embedding(teacher, self.teacher_neck_feat).detach()
                    extra["embedding"] = distill.embedding_weight * F.mse_loss(embedding, target)
            for loss in extra.values():
                total = total + loss
            totals[name] = total
            suffix = "" if len(outputs) == 1 else f"/{name}"
            parts.update({f"{key}{suffix}": value.detach() for key, value in {**losses, **extra}.items()})
        return totals, parts
