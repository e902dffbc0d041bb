"""Checkpoints: written atomically (a crash never leaves a half-written file in place of a good one), loaded with
``weights_only`` (a checkpoint cannot run code), and self-describing: the resolved recipe and the identity classes
travel with the weights, so evaluation and export need nothing else.

A mutual-learning run trains several networks: ``model`` holds the student's weights (the recipe's ``model``, as in
a single-network checkpoint), ``peers`` each other network's by name, and ``student`` says the student's name.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgereid.atomic import atomic_file
from edgereid.errors import ConfigError, DataError
from edgereid.modeling.config import ModelConfig
from edgereid.recipes import Recipe, recipe_from_dict

CHECKPOINT_FORMAT = "edgereid-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class QuantizationState:
    """What a QAT checkpoint holds beside the quantized weights: modelopt's quantizer state, the FP32 network's
    weights (unfolded: the reference every INT8 model is verified against), and the checkpoint they came from."""

    scheme: str
    modelopt_state: dict[str, Any]
    fp32_state: dict[str, torch.Tensor]
    init: dict[str, Any]
    calibration: dict[str, Any]

    def to_payload(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "modelopt_state": self.modelopt_state,
            "fp32_model": self.fp32_state,
            "init": self.init,
            "calibration": self.calibration,
        }

    @classmethod
    def from_payload(cls, payload: Any, where: str) -> QuantizationState:
        keys = ("scheme", "modelopt_state", "fp32_model", "init", "calibration")
        if not isinstance(payload, dict) or any(key not in payload for key in keys):
            missing = [key for key in keys if not isinstance(payload, dict) or key not in payload]
            raise DataError(f"{where} has a damaged quantization record: missing {', '.join(missing)}")
        return cls(
            scheme=str(payload["scheme"]),
            modelopt_state=dict(payload["modelopt_state"]),
            fp32_state=dict(payload["fp32_model"]),
            init=dict(payload["init"]),
            calibration=dict(payload["calibration"]),
        )


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
    student: str
    peer_states: dict[str, dict[str, torch.Tensor]]
    # Set for a quantization-aware trained checkpoint: ``model_state`` then holds the folded, fake-quantized network.
    quantization: QuantizationState | None = None

    @property
    def network_names(self) -> list[str]:
        """The networks it holds: the student first."""
        return [self.student, *self.peer_states]

    def network(self, name: str | None = None) -> tuple[str, ModelConfig, dict[str, torch.Tensor]]:
        """A network's name, model configuration and weights; ``None`` is the student."""
        name = self.student if name is None else name
        if name not in self.network_names:
            raise ConfigError(
                f"checkpoint '{self.path}' has no network {name!r}; it holds {', '.join(self.network_names)} "
                f"(student: {self.student})"
            )
        if name == self.student:
            return name, self.recipe.model, self.model_state
        return name, self.recipe.networks()[name], self.peer_states[name]


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
    peer_states: dict[str, dict[str, torch.Tensor]] | None = None,
    quantization: QuantizationState | None = None,
) -> None:
    """``model_state`` is the student's (the recipe's ``model``); ``peer_states`` the mutual peers', by name."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "recipe": recipe.model_dump(mode="json"),
        "model": model_state,
        "student": recipe.student,
        "peers": dict(peer_states or {}),
        "num_classes": len(class_pids),
        "class_pids": list(class_pids),
        "epoch": epoch,
        "iteration": iteration,
        "metrics": metrics,
        "training_state": training_state,
        "quantization": quantization.to_payload() if quantization is not None else None,
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(payload: Any, path: Path) -> None:
    with atomic_file(path) as file:
        torch.save(payload, file)


def load_model_state(model: torch.nn.Module, checkpoint: Checkpoint, network: str | None = None) -> None:
    """Put the weights of the checkpoint's ``network`` (default: the student) into ``model``; a checkpoint of
    another architecture gets a DataError."""
    name, _, state = checkpoint.network(network)
    what = f"checkpoint '{checkpoint.path}'" if not checkpoint.peer_states else (
        f"network {name!r} of checkpoint '{checkpoint.path}'"
    )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # size mismatches
        first = str(error).strip().splitlines()[1:2] or [str(error)]
        raise DataError(f"{what} does not fit the model its recipe describes: {first[0].strip()}") from None
    if missing or unexpected:
        raise DataError(
            f"{what} does not fit the model its recipe describes: missing keys "
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
    student = str(payload.get("student", recipe.student))
    peer_states = dict(payload.get("peers", {}))
    if [student, *peer_states] != list(recipe.networks()):
        raise DataError(
            f"checkpoint '{path}' holds the networks {[student, *peer_states]}, but its recipe describes "
            f"{list(recipe.networks())}"
        )
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
        # Checkpoints written before mutual learning hold one network, the recipe's model.
        student=student,
        peer_states=peer_states,
        quantization=(
            QuantizationState.from_payload(payload["quantization"], f"checkpoint '{path}'")
            if payload.get("quantization") is not None
            else None
        ),
    )
