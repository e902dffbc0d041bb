"""Checkpoints: written atomically (a crash never leaves a half-written file in place of a good one), loaded with
``weights_only`` (a checkpoint cannot run code), and self-describing: the resolved recipe and the identity classes
travel with the weights, so evaluation and export need nothing else."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgereid.errors import ConfigError, DataError
from edgereid.recipes import Recipe, recipe_from_dict

CHECKPOINT_FORMAT = "edgereid-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds. ``training_state`` (optimizer, scheduler, sampler, RNG) is only for resuming."""

    path: Path
    recipe: Recipe
    model_state: dict[str, torch.Tensor]
    num_classes: int
    class_pids: list[int]
    epoch: int
    iteration: int
    metrics: dict[str, Any]
    training_state: dict[str, Any]


def save_checkpoint(
    path: Path,
    *,
    recipe: Recipe,
    model_state: dict[str, torch.Tensor],
    class_pids: list[int],
    epoch: int,
    iteration: int,
    metrics: dict[str, Any],
    training_state: dict[str, Any],
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "recipe": recipe.model_dump(mode="json"),
        "model": model_state,
        "num_classes": len(class_pids),
        "class_pids": list(class_pids),
        "epoch": epoch,
        "iteration": iteration,
        "metrics": metrics,
        "training_state": training_state,
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_model_state(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Put the checkpoint's weights into ``model``; a checkpoint of another architecture gets a DataError."""
    try:
        missing, unexpected = model.load_state_dict(checkpoint.model_state, strict=False)
    except RuntimeError as error:  # size mismatches
        first = str(error).strip().splitlines()[1:2] or [str(error)]
        raise DataError(
            f"checkpoint '{checkpoint.path}' does not fit the model its recipe describes: {first[0].strip()}"
        ) from None
    if missing or unexpected:
        raise DataError(
            f"checkpoint '{checkpoint.path}' does not fit the model its recipe describes: missing keys "
            f"{list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}"
        )


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise DataError(f"checkpoint '{path}' does not exist; expected a .pt file or a run directory with last.pt")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = resolve_checkpoint_path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as error:
        raise DataError(f"checkpoint '{path}' cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"'{path}' is not an edgereid checkpoint (expected a file written by `edgereid train`, with "
            f"format '{CHECKPOINT_FORMAT}')"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise DataError(
            f"checkpoint '{path}' has format version {payload.get('version')}; this edgereid reads version "
            f"{CHECKPOINT_VERSION}"
        )
    try:
        recipe = recipe_from_dict(payload["recipe"], f"the recipe saved in checkpoint '{path}'")
    except ConfigError as error:
        raise DataError(str(error)) from None
    return Checkpoint(
        path=path,
        recipe=recipe,
        model_state=payload["model"],
        num_classes=int(payload["num_classes"]),
        class_pids=[int(pid) for pid in payload["class_pids"]],
        epoch=int(payload["epoch"]),
        iteration=int(payload["iteration"]),
        metrics=dict(payload["metrics"]),
        training_state=dict(payload["training_state"]),
    )
