"""Checkpoints: written atomically (a crash never leaves a half-written file in place of a good one), loaded with
``weights_only`` (a checkpoint cannot run code), and self-describing: the resolved recipe and the identity classes
travel with the weights, so evaluation and export need nothing else.

A mutual-learning run trains several networks: ``model`` holds the student's weights (the recipe's ``model``, as in
a single-network checkpoint), ``peers`` each other network's by name, and ``student`` says the student's name.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

from edgereid.atomic import atomic_file
from edgereid.errors import ConfigError, DataError
from edgereid.modeling.config import ModelConfig
from edgereid.recipes import Recipe, recipe_from_dict

CHECKPOINT_FORMAT = "edgereid-checkpoint"
CHECKPOINT_VERSION = 1
_VERIFY_CHUNK_BYTES = 1 << 20
# What torch's weights-only unpickler names when it refuses a file (PyTorch 2.x messages).
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL (?P<name>[\w.]+)")
_UNSUPPORTED_OPERAND = re.compile(r"Unsupported operand (?P<code>\d+)")
_Value = TypeVar("_Value")


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
        for key in keys:
            expected = str if key == "scheme" else dict
            if not isinstance(payload[key], expected):
                raise DataError(
                    f"{where} has a damaged quantization record: '{key}' must be "
                    f"{'a string' if expected is str else 'a mapping'}, got {type(payload[key]).__name__}"
                )
        return cls(
            scheme=payload["scheme"],
            modelopt_state=payload["modelopt_state"],
            fp32_state=_state_dict(payload["fp32_model"], "quantization.fp32_model", where),
            init=payload["init"],
            calibration=payload["calibration"],
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
    """The checkpoint at ``path`` (a .pt file or a run directory), refused with one DataError line naming the file
    when it is damaged (a zip member fails its CRC-32), is not an edgereid checkpoint, or holds a field of the
    wrong type."""
    path = resolve_checkpoint_path(path)
    try:
        # One handle for the check and the load: the bytes verified are the bytes unpickled.
        with path.open("rb") as file:
            _verify_archive(file, path)
            file.seek(0)
            payload = _unpickle(file, path)
    except OSError as error:
        raise DataError(f"checkpoint '{path}' cannot be read ({type(error).__name__}: {error.strerror})") from None
    return _checkpoint_from_payload(payload, path)


def _verify_archive(file: IO[bytes], path: Path) -> None:
    """Refuse a file that is not the zip archive torch.save writes, or one whose members fail their CRC-32.

    torch.load checks neither: a flipped bit in a weight loads as a different weight, silently.
    """
    if not file.read(1):
        raise DataError(f"checkpoint '{path}' is empty; expected a zip archive written by torch.save")
    file.seek(0)
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile:
        raise DataError(
            f"'{path}' is not an edgereid checkpoint: not a complete zip archive written by torch.save (another "
            "kind of file, or one cut short)"
        ) from None
    except (ValueError, EOFError, struct.error) as error:  # a damaged end-of-archive record
        raise DataError(f"checkpoint '{path}' is damaged: its zip directory is unreadable ({error})") from None
    with archive:
        members = archive.infolist()
        if not any(member.filename.endswith("/data.pkl") for member in members):
            raise DataError(
                f"'{path}' is not an edgereid checkpoint: a zip archive without the data.pkl that torch.save writes"
            )
        for member in members:
            _verify_member(archive, member, path)


def _verify_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> None:
    try:
        with archive.open(member) as content:
            # Reading to the end is what makes zipfile compare the member's CRC-32.
            while content.read(_VERIFY_CHUNK_BYTES):
                pass
    except zipfile.BadZipFile as error:
        if str(error).startswith("Bad CRC-32"):
            raise DataError(
                f"checkpoint '{path}' is damaged: {member.filename} fails its CRC-32 check (the file changed after "
                "it was written); use another checkpoint or retrain"
            ) from None
        raise DataError(f"checkpoint '{path}' is damaged: {member.filename}: {error}") from None
    except (EOFError, NotImplementedError, RuntimeError, ValueError, zlib.error, struct.error) as error:
        # Truncated data, or header fields (compression method, flags, sizes) no torch.save writes.
        raise DataError(
            f"checkpoint '{path}' is damaged: {member.filename} cannot be read ({type(error).__name__}: {error})"
        ) from None


def _unpickle(file: IO[bytes], path: Path) -> Any:
    """``torch.load`` with ``weights_only`` (no pickled code runs); its refusals become one line that says why the
    file is not a checkpoint, never PyTorch's advice to load it with ``weights_only=False``."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DataError(f"'{path}' is not an edgereid checkpoint: {_refusal_reason(str(error))}") from None
    except Exception as error:  # noqa: BLE001 - any failure of torch's parser on a file that passed its CRCs
        first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise DataError(
            f"'{path}' is not an edgereid checkpoint: torch.load cannot read it ({type(error).__name__}: "
            f"{first_line[:200]})"
        ) from None


def _refusal_reason(message: str) -> str:
    """Why the weights-only unpickler refused a file, from its message."""
    forbidden = _FORBIDDEN_GLOBAL.search(message)
    if forbidden:
        return f"it holds a pickled object of type {forbidden['name']} that a checkpoint never contains"
    operand = _UNSUPPORTED_OPERAND.search(message)
    if operand:
        return f"its pickle holds instruction {operand['code']}, which a checkpoint never contains"
    return "it holds pickled content that a checkpoint never contains"


def _checkpoint_from_payload(payload: Any, path: Path) -> Checkpoint:
    if not isinstance(payload, dict):
        raise DataError(
            f"'{path}' is not an edgereid checkpoint: it holds a {type(payload).__name__}, not the mapping "
            "`edgereid train` writes"
        )
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"'{path}' is not an edgereid checkpoint (expected a file written by `edgereid train`, with "
            f"format '{CHECKPOINT_FORMAT}')"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise DataError(
            f"checkpoint '{path}' has format version {payload.get('version')!r}; this edgereid reads version "
            f"{CHECKPOINT_VERSION}"
        )
    where = f"checkpoint '{path}'"
    recipe_content = _field(payload, "recipe", dict, "a mapping", where)
    try:
        recipe = recipe_from_dict(recipe_content, f"the recipe saved in {where}")
    except ConfigError as error:
        raise DataError(str(error)) from None
    # Checkpoints written before mutual learning hold one network, the recipe's model: no student, no peers.
    student = payload.get("student", recipe.student)
    if not isinstance(student, str):
        raise DataError(f"{where}: 'student' must be a network name, got {type(student).__name__}")
    peers = payload.get("peers", {})
    if not isinstance(peers, dict):
        raise DataError(f"{where}: 'peers' must be a mapping of network names to weights, got {type(peers).__name__}")
    peer_states = {str(name): _state_dict(state, f"peers.{name}", where) for name, state in peers.items()}
    if [student, *peer_states] != list(recipe.networks()):
        raise DataError(
            f"{where} holds the networks {[student, *peer_states]}, but its recipe describes "
            f"{list(recipe.networks())}"
        )
    class_pids = _field(payload, "class_pids", list, "a list of identity numbers", where)
    if not all(_is_integer(pid) for pid in class_pids):
        raise DataError(f"{where}: 'class_pids' must be a list of identity numbers")
    num_classes = _field(payload, "num_classes", int, "an integer", where)
    if num_classes != len(class_pids):
        raise DataError(f"{where}: 'num_classes' is {num_classes}, but 'class_pids' lists {len(class_pids)} classes")
    quantization = payload.get("quantization")
    return Checkpoint(
        path=path,
        recipe=recipe,
        model_state=_state_dict(_field(payload, "model", dict, "the model's weights", where), "model", where),
        num_classes=num_classes,
        class_pids=list(class_pids),
        epoch=_field(payload, "epoch", int, "an integer", where),
        iteration=_field(payload, "iteration", int, "an integer", where),
        metrics=_field(payload, "metrics", dict, "a mapping", where),
        training_state=_field(payload, "training_state", dict, "a mapping", where),
        student=student,
        peer_states=peer_states,
        quantization=QuantizationState.from_payload(quantization, where) if quantization is not None else None,
    )


def _field(payload: dict[str, Any], key: str, kind: type[_Value], expected: str, where: str) -> _Value:
    value = payload.get(key)
    if key not in payload:
        raise DataError(f"{where} is damaged: it has no '{key}' (expected {expected})")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where} is damaged: '{key}' must be {expected}, got {type(value).__name__}")
    return value


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _state_dict(state: Any, key: str, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state.items()
    ):
        raise DataError(f"{where} is damaged: '{key}' must be a mapping of parameter names to tensors")
    return state
