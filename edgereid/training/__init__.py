"""Training and evaluating models: ``train(recipe)`` writes a run directory (resolved recipe, metrics.jsonl,
TensorBoard, last/best/periodic checkpoints); ``evaluate_checkpoint`` scores a checkpoint on a query/gallery."""

from edgereid.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgereid.training.evaluate import EvaluationReport, build_model, evaluate_checkpoint
from edgereid.training.inference import embed_images
from edgereid.training.trainer import TrainResult, train

__all__ = [
    "Checkpoint",
    "EvaluationReport",
    "TrainResult",
    "build_model",
    "embed_images",
    "evaluate_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
