"""Evaluating a checkpoint on a data set's query and gallery: the model and its input size come from the recipe
saved in the checkpoint; the data, flip test, query expansion and re-ranking can be chosen."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgereid.data.selection import DataSelection
from edgereid.data.transforms import EvalTransform
from edgereid.errors import DataError
from edgereid.evaluation.distance import Metric
from edgereid.evaluation.features import query_gallery_distances, rank_distances
from edgereid.evaluation.rank import RankResult
from edgereid.modeling import ReIDModel, create_model
from edgereid.training.checkpoint import Checkpoint, load_checkpoint, load_model_state
from edgereid.training.data import decode_split, prepare_dataset
from edgereid.training.inference import embed_images
from edgereid.training.trainer import resolve_device

if TYPE_CHECKING:
    from edgereid.data.images import DecodedImages
    from edgereid.recipes.schema import DataConfig


def build_model(checkpoint: Checkpoint, device: torch.device | str = "cpu", network: str | None = None) -> ReIDModel:
    """The checkpoint's model with its weights, in eval mode, on ``device``: the network named ``network`` of a
    mutual-learning checkpoint (default: the student); an unknown name is a ConfigError listing the names. A
    quantization-aware trained student is the folded network with its fake quantizers: INT8 arithmetic simulated."""
    name, config, weights = checkpoint.network(network)
    if checkpoint.quantization is not None and name == checkpoint.student:
        from edgereid.training.qat import restore_quantized_model

        return restore_quantized_model(config, checkpoint.num_classes, checkpoint.quantization, weights).to(device)
    model = create_model(config, num_classes=checkpoint.num_classes)
    load_model_state(model, checkpoint, network)
    return model.to(device).eval()


def build_reference_model(
    checkpoint: Checkpoint, device: torch.device | str = "cpu", network: str | None = None
) -> ReIDModel:
    """The FP32 network that reduced-precision models of ``network`` are verified against: :func:`build_model`'s,
    except for a quantization-aware trained student, whose FP32 reference is the network QAT started from."""
    name, config, _ = checkpoint.network(network)
    if checkpoint.quantization is not None and name == checkpoint.student:
        from edgereid.training.qat import build_fp32_model

        return build_fp32_model(config, checkpoint.num_classes, checkpoint.quantization).to(device)
    return build_model(checkpoint, device, network)


@dataclass(frozen=True)
class EvaluationReport:
    checkpoint: Path
    network: str
    data_root: Path
    num_query: int
    num_gallery: int
    flip: bool
    rerank: bool
    aqe: bool
    metric: str
    result: RankResult
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        summary = self.result.to_dict()
        summary.pop("cmc")
        return {
            "checkpoint": str(self.checkpoint),
            "network": self.network,
            "data_root": str(self.data_root),
            "num_query": self.num_query,
            "num_gallery": self.num_gallery,
            "flip": self.flip,
            "rerank": self.rerank,
            "aqe": self.aqe,
            "metric": self.metric,
            **summary,
            "cmc_top10": [float(value) for value in self.result.cmc[:10]],
            "elapsed_s": self.elapsed_s,
        }


@dataclass(frozen=True)
class EmbeddedSplits:
    """One network of a checkpoint run over a data set's query and gallery: what scoring and drawing need."""

    checkpoint: Checkpoint
    network: str
    data: DataConfig
    query: DecodedImages
    gallery: DecodedImages
    query_features: np.ndarray
    gallery_features: np.ndarray
    flip: bool


def select_data(data: DataConfig, selection: DataSelection | None = None) -> DataConfig:
    """A recipe's ``data`` with ``selection`` (the data a command names instead: root, format, reader options,
    holdout) applied by the rule of :class:`edgereid.data.selection.DataSelection`. What ``edgereid eval``,
    :func:`edgereid.export.verify_bundle` and (on a bundle's record) ``edgereid verify`` use alike."""
    if selection is None or selection.empty:
        return data
    return type(data).model_validate(selection.apply(data.model_dump()))


def embed_splits(
    checkpoint_path: str | Path,
    *,
    data: DataSelection | None = None,
    flip: bool | None = None,
    device: str = "auto",
    batch_size: int = 128,
    network: str | None = None,
) -> EmbeddedSplits:
    """The query and gallery of the data the checkpoint was trained with (or ``data`` instead, by
    :func:`select_data`) embedded by one of its networks, as :func:`evaluate_checkpoint` scores them."""
    checkpoint = load_checkpoint(checkpoint_path)
    network_name, _, _ = checkpoint.network(network)
    selected = select_data(checkpoint.recipe.data, data)
    dataset = prepare_dataset(selected, require_train=False)
    if not dataset.query or not dataset.gallery:
        raise DataError(
            f"data set '{selected.root}' has no query or no gallery split to evaluate on (query: {len(dataset.query)}, "
            f"gallery: {len(dataset.gallery)} images)"
        )
    torch_device = resolve_device(device)
    model = build_model(checkpoint, torch_device, network_name)
    transform = EvalTransform(selected.size, selected.mean, selected.std)
    use_flip = checkpoint.recipe.train.flip_test if flip is None else flip
    query = decode_split(dataset.query, selected, "query")
    gallery = decode_split(dataset.gallery, selected, "gallery")
    query_features = embed_images(model, query.images, transform, torch_device, batch_size=batch_size, flip=use_flip)
    gallery_features = embed_images(
        model, gallery.images, transform, torch_device, batch_size=batch_size, flip=use_flip
    )
    return EmbeddedSplits(
        checkpoint, network_name, selected, query, gallery, query_features, gallery_features, use_flip
    )


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    data: DataSelection | None = None,
    flip: bool | None = None,
    rerank: bool = False,
    aqe: bool = False,
    metric: Metric = "cosine",
    device: str = "auto",
    batch_size: int = 128,
    network: str | None = None,
) -> EvaluationReport:
    """Score a checkpoint on the query/gallery of the data it was trained with, or of ``data`` instead (its root,
    format, reader options and holdout replacing the recipe's: :func:`select_data`).

    ``flip`` defaults to the recipe's ``train.flip_test``; ``network`` picks a network of a mutual-learning
    checkpoint (default: the student).
    """
    started = time.perf_counter()
    embedded = embed_splits(checkpoint_path, data=data, flip=flip, device=device, batch_size=batch_size,
                            network=network)
    distances = query_gallery_distances(embedded.query_features, embedded.gallery_features, metric=metric, rerank=rerank,
                                  aqe=aqe)
    return report_for(embedded, distances, metric=metric, rerank=rerank, aqe=aqe, started=started)


def report_for(
    embedded: EmbeddedSplits, distances: np.ndarray, *, metric: Metric, rerank: bool, aqe: bool, started: float
) -> EvaluationReport:
    """The evaluation report of ``embedded`` ranked by ``distances`` (from :func:`query_gallery_distances`)."""
    return EvaluationReport(
        checkpoint=embedded.checkpoint.path,
        network=embedded.network,
        data_root=Path(embedded.data.root),
        num_query=len(embedded.query.records),
        num_gallery=len(embedded.gallery.records),
        flip=embedded.flip,
        rerank=rerank,
        aqe=aqe,
        metric=metric,
        result=rank_distances(distances, embedded.query.records, embedded.gallery.records),
        elapsed_s=time.perf_counter() - started,
    )
