"""Which data a command reads instead of the recipe's (or a bundle's recorded) data set: a root, a format, reader
options and a holdout, each replacing the recorded value where given. One rule for ``edgereid eval``, ``edgereid
verify`` and ``edgereid export``'s verification (``edgereid.training.evaluate.select_data`` applies it to a recipe's
``DataConfig``, ``edgereid.runtime.verify`` to a bundle's manifest ``data`` record). Torch-free."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgereid.errors import ConfigError


@dataclass(frozen=True)
class DataSelection:
    """What replaces the recorded data set description; None (or no options) keeps the recorded value.

    - ``root`` replaces the root (and drops a synthetic data set's generation); format, options and holdout stay.
    - ``format`` replaces the format and drops the recorded reader options and holdout (they belong to the
      recorded format), unless ``options`` / ``holdout_ids`` are given too.
    - ``options`` (reader options, e.g. ``camera_regex`` of the folder reader) replace the recorded options.
    - ``holdout_ids`` cuts a query/gallery protocol from the train split, holding out that many identities
      (``holdout_seed``: chosen at random with this seed; None: ``make_holdout``'s default choice).
    """

    root: Path | None = None
    format: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    holdout_ids: int | None = None
    holdout_seed: int | None = None

    def __post_init__(self) -> None:
        if self.holdout_ids is not None and self.holdout_ids < 1:
            raise ConfigError(f"--holdout-ids must be at least 1, got {self.holdout_ids}")
        if self.holdout_seed is not None and self.holdout_ids is None:
            raise ConfigError("--holdout-seed needs --holdout-ids")

    @property
    def empty(self) -> bool:
        return self == DataSelection()

    def apply(self, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """``recorded`` (a mapping with ``root``, ``format``, ``options``, ``holdout`` and optionally ``synthetic``
        keys: a recipe's ``data`` dumped, or a manifest's ``data`` record) with this selection applied; the
        reader options are checked against the reader that will read them (a ConfigError naming the known ones)."""
        data = dict(recorded)
        if self.root is not None:
            data["root"] = Path(self.root)
            if "synthetic" in data:
                data["synthetic"] = None
        if self.format is not None:
            data.update(format=self.format, options={}, holdout=None)
        if self.options:
            data["options"] = dict(self.options)
        if self.holdout_ids is not None:
            data["holdout"] = {"num_test_ids": self.holdout_ids, "seed": self.holdout_seed}
        if self.options:
            check_reader_options(data.get("root"), data.get("format"), data["options"])
        return data


def check_reader_options(root: str | Path | None, format: str | None, options: Mapping[str, Any]) -> None:
    """A ConfigError naming the reader's options when ``options`` holds a key the reader of ``format`` (detected
    from ``root`` when None) does not take; nothing when the format cannot be told yet (reading will say why)."""
    from edgereid.data.registry import _READERS, _load_builtin_readers, detect_format

    _load_builtin_readers()
    name = format
    if name is None:
        if root is None or not Path(root).is_dir():
            return
        name = detect_format(root)
    spec = _READERS.get(name)
    if spec is None:
        return  # load_dataset names the unknown format
    parameters = list(inspect.signature(spec.read).parameters.values())[1:]  # after the root
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    known = [parameter.name for parameter in parameters]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"the {name} reader has no option {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(known) or 'none'})"
        )


__all__ = ["DataSelection", "check_reader_options"]
