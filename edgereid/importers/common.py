"""What every importer shares: reading a foreign weights file without running its pickle, matching its tensors to
an edgereid model key by key, and writing the result as an ordinary edgereid checkpoint.

A foreign file is read with ``torch.load(weights_only=True)``. The only non-tensor objects allowed are the plain
values these files really hold, by name: numpy scalars and their dtypes (torchreid stores ``rank1`` as a numpy
float). Anything else (a class, a function, ``os.system``) is refused with its name, before any of it runs.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edgereid.errors import ConfigError, DataError
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.model import ReIDModel, create_model

# Checkpoints that wrap the weights under one of these keys (torchreid: state_dict; FastReID: model).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# The recipe's data root until the user names theirs (`edgereid eval CK --data ROOT`).
PLACEHOLDER_DATA_ROOT = Path("data")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL (?P<name>[\w.]+)")
_MAX_LISTED = 5


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars and dtypes under the names numpy 1.x and 2.x pickle them with."""
    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    for kind in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_class = getattr(np.dtypes, kind, None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


@dataclass(frozen=True)
class Preprocessing:
    """What the source library does to an image before its network: resize to ``size`` (H, W), scale to [0, 1],
    subtract ``mean`` and divide by ``std`` (edgereid's convention, the recipe's ``data`` section)."""

    size: tuple[int, int] = (256, 128)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class DataSource:
    """The data set an imported checkpoint's recipe names: where INT8 calibration draws its train images and what
    ``eval``/``verify`` use without ``--data``."""

    root: Path
    format: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """An imported model: the path written, the edgereid model configuration and what it came from."""

    path: Path
    model: ModelConfig
    preprocessing: Preprocessing
    provenance: dict[str, Any]
    notes: list[str] = field(default_factory=list)




def _refusal(path: Path, library: str, error: Exception, raw: bytes) -> DataError:
    names: list[str] = []
    # Not a zip checkpoint (torch's legacy format, a bare pickle): the unpickler's message names the global.
    with contextlib.suppress(Exception):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(raw))
    allowed = {f"{getattr(obj, '__module__', '')}.{getattr(obj, '__name__', '')}" for obj in _numpy_safe_globals()
               if not isinstance(obj, tuple)} | {"numpy.core.multiarray.scalar"}
    names = [name for name in names if name not in allowed]
    if not names:
        match = _FORBIDDEN_GLOBAL.search(str(error))
        names = [match["name"]] if match else []
    what = f"pickled objects of type {', '.join(names)}" if names else "pickled content other than tensors"
    return DataError(
        f"'{path}' is refused as {library} weights: it holds {what}, which a weights file never needs and which "
        "edgereid does not run (only tensors, plain containers and numpy scalars are read)"
    )


def read_weights(path: Path, library: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors of a foreign weights file by key, and the rest of its top-level mapping (epoch, rank1, …).

    Unwraps ``state_dict``/``model`` wrappers and strips DataParallel's ``module.`` prefixes. Never runs a pickle.
    """
    if not path.is_file():
        raise DataError(f"{library} weights '{path}' do not exist; expected a .pth/.pt/.pth.tar file")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{library} weights '{path}' are empty; expected a file written by torch.save")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            content = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(path, library, error, raw) from None
    except Exception as error:  # noqa: BLE001 - torch raises zip, EOF and runtime errors alike for a non-checkpoint
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise DataError(
            f"'{path}' is not a PyTorch weights file: torch.load cannot read it ({first[:160]}); expected the "
            f"{library} .pth/.pt/.pth.tar file"
        ) from None
    extra: dict[str, Any] = {}
    if isinstance(content, Mapping):
        for wrapper in WRAPPER_KEYS:
            if isinstance(content.get(wrapper), Mapping):
                extra = {str(key): value for key, value in content.items() if key != wrapper}
                content = content[wrapper]
                break
    if not isinstance(content, Mapping) or not content:
        raise DataError(
            f"'{path}' holds {type(content).__name__ if content is not None else 'nothing'}, not {library} weights "
            f"(a mapping of parameter names to tensors, or a checkpoint with one under {' or '.join(WRAPPER_KEYS[:2])})"
        )
    bad = next((key for key, value in content.items() if not isinstance(value, Tensor)), None)
    if bad is not None:
        raise DataError(
            f"'{path}' is not a state dict: key '{bad}' holds {type(content[bad]).__name__}, expected a tensor"
        )
    state = {str(key): value for key, value in content.items()}
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state, extra


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def load_mapped_weights(
    model: ReIDModel,
    mapped: Mapping[str, Tensor],
    *,
    path: Path,
    what: str,
    source_key: Callable[[str], str] = lambda key: key,
    optional_prefixes: tuple[str, ...] = ("heads.classifier.",),
) -> None:
    """Copy ``mapped`` (keys already in edgereid's names) into ``model``; refuse with one line listing the keys
    that are missing, left over or of another shape. ``source_key`` names a key as the source file spells it;
    keys under ``optional_prefixes`` (the identity classifier) may be missing and keep their initialisation."""
    own = model.state_dict()
    missing = [key for key in own if key not in mapped and not key.startswith(optional_prefixes)]
    unexpected = [source_key(key) for key in mapped if key not in own]
    misshaped = [
        f"{source_key(key)} {tuple(value.shape)} (expected {tuple(own[key].shape)})"
        for key, value in mapped.items()
        if key in own and own[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_listed([source_key(key) for key in missing])}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {_listed(misshaped)}")
    if problems:
        raise DataError(f"'{path}' does not fit {what}: " + "; ".join(problems))
    usable = {key: value for key, value in mapped.items() if key in own}
    model.load_state_dict(usable, strict=False)


def build_model(cfg: ModelConfig, num_classes: int) -> ReIDModel:
    try:
        return create_model(cfg, num_classes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # a configuration the builders cannot realise
        raise ConfigError(f"edgereid cannot build the imported model: {error}") from None


def write_checkpoint(
    out: Path,
    *,
    name: str,
    model: ReIDModel,
    preprocessing: Preprocessing,
    provenance: dict[str, Any],
    notes: list[str] | None = None,
    data: DataSource | None = None,
) -> ImportResult:
    """Save ``model`` as an edgereid checkpoint whose recipe describes it and its preprocessing (atomic: a failure
    leaves nothing at ``out``). ``data`` is the data set the recipe names (for calibration and evaluation); without
    it a placeholder root that commands override with ``--data``."""
    # Imported lazily: the recipe schema pulls in the data and training stacks.
    from edgereid.recipes import recipe_from_dict
    from edgereid.training.checkpoint import save_checkpoint

    cfg = model.cfg
    description = f"imported from {provenance['library']} ({Path(provenance['file']).name}, sha256 " \
                  f"{provenance['sha256'][:12]}…)"
    recipe = recipe_from_dict(
        {
            "name": re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-") or "imported",
            "description": description,
            "data": {
                "root": str(data.root if data is not None else PLACEHOLDER_DATA_ROOT),
                "format": data.format if data is not None else None,
                "size": list(preprocessing.size),
                "mean": list(preprocessing.mean),
                "std": list(preprocessing.std),
            },
            "model": cfg.model_dump(mode="json"),
        },
        f"the recipe of the model imported from '{provenance['file']}'",
    )
    weight = getattr(model.heads.classifier, "weight", None)
    num_classes = int(weight.shape[0]) if isinstance(weight, Tensor) else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out,
        recipe=recipe,
        model_state={key: value.detach().clone() for key, value in model.state_dict().items()},
        class_pids=list(range(num_classes)),
        epoch=0,
        iteration=0,
        metrics={"imported": provenance},
        training_state={},
    )
    return ImportResult(out, cfg, preprocessing, provenance, list(notes or []))
