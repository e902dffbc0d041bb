"""Export options as one typed object, as :class:`edgereid.recipes.Recipe` is for training: what ``edgereid export``
and :func:`edgereid.export.export_checkpoint` take, loadable from YAML (or from a bundle, whose manifest records the
options it was exported with under ``export_options``), so that an export is reproducible from its bundle alone::

    edgereid export CHECKPOINT --options OLD_BUNDLE --out NEW_BUNDLE   # the manifest's source.checkpoint names it

The values are checked where they are used (``export_checkpoint`` names a bad precision, opset or budget with the
flag a user would change); this schema checks keys and types.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgereid.bundle_format import DEFAULT_MAX_MAP_DROP, MANIFEST_NAME, read_manifest
from edgereid.data.selection import DataSelection
from edgereid.errors import ConfigError
from edgereid.export.common import DEFAULT_OPSET


class ExportOptions(BaseModel):
    """How a checkpoint is exported (see ``export_checkpoint``); the destination (``out_dir``, ``overwrite``) is not
    part of it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    precisions: list[str] = Field(
        default_factory=lambda: ["fp32"], description="fp32 (always exported: the reference), fp16, int8, int8_cpu"
    )
    network: str | None = Field(None, description="which network of a mutual-learning checkpoint (None: its student)")
    opset: int = DEFAULT_OPSET
    verify: bool = Field(False, description="score every model with ONNX Runtime against the PyTorch checkpoint")
    data_root: Path | None = Field(None, description="the data set to verify on (None: the recipe's)")
    data_format: str | None = Field(
        None, description="its format (None: the recipe's, or detected); drops the recipe's reader options and holdout"
    )
    data_options: dict[str, Any] = Field(
        default_factory=dict, description="reader options of the data set to verify on (empty: the recipe's)"
    )
    holdout_ids: int | None = Field(
        None, ge=1, description="verify on N identities held out of its train split (None: the recipe's holdout)"
    )
    holdout_seed: int | None = Field(None, description="seed of the held-out identities' draw (with holdout_ids)")
    max_images: int | None = Field(None, description="verify on the first N query and N gallery images only")
    calibration_images: int | None = Field(None, description="INT8 calibration images (None: the policy's)")
    calibration_seed: int | None = Field(None, description="seed of the calibration draw (None: the policy's)")
    calibration_method: str = "entropy"
    calibration_policy: str | None = Field(None, description="a shipped policy name or a policy YAML file")
    calibration_cache_dir: Path | None = None
    max_map_drop: float | None = Field(
        DEFAULT_MAX_MAP_DROP, description="post-training INT8 budget in mAP points (None: plain PTQ, no search)"
    )
    equalize: bool | None = Field(None, description="activation equalization before INT8 (None: the target's default)")
    bias_correction: bool | None = Field(
        None, description="correct biases for weight rounding in the TensorRT INT8 model (None: its default, on)"
    )
    heldout_margin: float | None = Field(None, description="the held-out margin in mAP points (None: the default)")

    @field_validator("precisions", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else list(value) if isinstance(value, tuple) else value

    @field_validator("calibration_policy", mode="before")
    @classmethod
    def _policy_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    def data_selection(self) -> DataSelection:
        """The data to verify on instead of the recipe's, as :func:`edgereid.export.verify_bundle` takes it."""
        return DataSelection(root=self.data_root, format=self.data_format, options=self.data_options,
                             holdout_ids=self.holdout_ids, holdout_seed=self.holdout_seed)

    def recorded(self) -> dict[str, Any]:
        """The options as the manifest records them: JSON, paths made absolute (a policy that names a file too), so
        that they mean the same from another working directory."""
        record = self.model_dump(mode="json")
        for key in ("data_root", "calibration_cache_dir"):
            if record[key] is not None:
                record[key] = str(Path(record[key]).expanduser().resolve())
        policy = record["calibration_policy"]
        if policy is not None and Path(policy).expanduser().is_file():
            record["calibration_policy"] = str(Path(policy).expanduser().resolve())
        return record


def data_selection_fields(selection: DataSelection) -> dict[str, Any]:
    """The :class:`ExportOptions` values that record ``selection`` (:meth:`ExportOptions.data_selection` reads
    them back)."""
    return {"data_root": selection.root, "data_format": selection.format, "data_options": dict(selection.options),
            "holdout_ids": selection.holdout_ids, "holdout_seed": selection.holdout_seed}


def export_options(options: ExportOptions | None = None, /, **keywords: Any) -> ExportOptions:
    """``options`` (default: the defaults) with ``keywords`` replacing its values, validated; an unknown key or a
    value of the wrong type is a ConfigError naming it."""
    base = options.model_dump() if options is not None else {}
    return _validated({**base, **keywords}, "export options")


def load_export_options(source: str | Path, overrides: Mapping[str, Any] | None = None) -> ExportOptions:
    """Export options from ``source``: a YAML file holding a mapping of :class:`ExportOptions` keys, or a bundle (its
    directory or its ``manifest.json``), whose recorded ``export_options`` are taken; ``overrides`` replace values."""
    path = Path(source)
    if path.is_dir() or path.name == MANIFEST_NAME:
        bundle = path if path.is_dir() else path.parent
        recorded = read_manifest(bundle).get("export_options")
        if recorded is None:
            raise ConfigError(
                f"bundle '{bundle}' records no export options (it was exported before edgereid recorded them); "
                "give the options as flags or in a YAML file"
            )
        return _validated({**recorded, **(overrides or {})}, f"the export options of bundle '{bundle}'")
    if not path.is_file():
        raise ConfigError(f"export options file '{path}' does not exist")
    import yaml

    try:
        content = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"export options file '{path}' cannot be read as YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(
            f"export options file '{path}' must hold a mapping of option names to values, not {type(content).__name__}"
        )
    return _validated({**content, **(overrides or {})}, f"export options file '{path}'")


def _validated(values: Mapping[str, Any], source: str) -> ExportOptions:
    try:
        return ExportOptions.model_validate(dict(values))
    except ValidationError as error:
        problems = []
        for problem in error.errors(include_url=False):
            key = ".".join(str(part) for part in problem["loc"])
            if problem["type"] == "extra_forbidden":
                problems.append(f"unknown option {key!r} (known: {', '.join(ExportOptions.model_fields)})")
            else:
                problems.append(f"{key}: {problem['msg']} (got {problem.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
