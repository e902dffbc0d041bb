"""The gallery format: what ``edgereid.runtime.gallery`` writes into a gallery directory and checks on every load.

A gallery directory holds ``gallery.json`` (the header: :class:`GalleryHeader`), ``index.faiss`` and
``items.jsonl`` (one :class:`ItemRecord` per line, in id order). :func:`read_header` and :func:`read_items` turn
whatever is wrong with them into one :class:`~edgereid.errors.DataError` line naming the file, the key and what was
expected, never a traceback.

Like :mod:`edgereid.bundle_format`, this module imports pydantic, the standard library and the error classes only,
and its records are *strict* (JSON types as written: ``"16"`` is not a dimension) and *open* (a key this version
does not know is ignored, so a gallery that a later edgereid of the same format version enriched still loads).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgereid.bundle_format import Precision
from edgereid.errors import DataError
from edgereid.jsonfile import parse_json_object

FORMAT = "edgereid.gallery"
FORMAT_VERSION = 1
HEADER_FILE = "gallery.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.jsonl"

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class FileRecord(_Record):
    """The checksum and size of one of the gallery's files, as saved."""

    sha256: Sha256
    bytes: Count


class GalleryHeader(_Record):
    """``gallery.json`` of format :data:`FORMAT`, version :data:`FORMAT_VERSION`."""

    format: Literal["edgereid.gallery"]
    version: Literal[1]
    created: str | None = None
    dim: int = Field(ge=1)
    # The sha256 of the embedding model's FP32 ONNX file: every precision of one model shares it.
    model_id: str = Field(min_length=1)
    # The precision the embeddings were computed at; None for galleries made before it was recorded, or through
    # the Python API without one.
    precision: Precision | None = None
    factory: str = Field(min_length=1)
    count: Count
    next_id: Count
    tombstones: list[Count]
    files: dict[Literal["index.faiss", "items.jsonl"], FileRecord]

    @model_validator(mode="after")
    def _both_files(self) -> GalleryHeader:
        missing = [name for name in (INDEX_FILE, ITEMS_FILE) if name not in self.files]
        if missing:
            raise ValueError(f"files: expected the sha256 and bytes of {INDEX_FILE} and {ITEMS_FILE}; "
                             f"{' and '.join(missing)} missing")
        return self


class ItemRecord(_Record):
    """One line of ``items.jsonl``: an item's id and metadata."""

    id: Count
    identity: str | None = None
    camera: str | None = None
    path: str | None = None
    time: float | None = None
    sha256: Sha256 | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def read_header(root: Path) -> tuple[GalleryHeader, str]:
    """The validated header of the gallery directory ``root`` and its revision (the sha256 of the header file's
    bytes: it names every file's checksum, so an unchanged revision is an unchanged gallery)."""
    header_path = root / HEADER_FILE
    if not header_path.is_file():
        raise DataError(f"'{root}' is not a gallery: {HEADER_FILE} is missing (make one with `edgereid gallery build`)")
    try:
        data = header_path.read_bytes()
    except OSError as error:
        raise DataError(f"'{header_path}' cannot be read ({type(error).__name__}: {error})") from None
    header = parse_json_object(data, header_path, "a gallery header")
    if header.get("format") != FORMAT:
        raise DataError(f"'{header_path}' is not an {FORMAT} header (format {header.get('format')!r})")
    if header.get("version") != FORMAT_VERSION:
        raise DataError(
            f"'{header_path}' has gallery format version {header.get('version')!r}; this edgereid reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        validated = GalleryHeader.model_validate(header)
    except ValidationError as error:
        raise DataError(f"'{header_path}' is not a valid gallery header: {describe_error(error)}") from None
    return validated, hashlib.sha256(data).hexdigest()


def read_items(path: Path) -> Iterator[ItemRecord]:
    """The item records of ``items.jsonl`` at ``path``, in file order."""
    try:
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                try:
                    yield ItemRecord.model_validate_json(line)
                except ValidationError as error:
                    raise DataError(f"'{path}' line {number} is not a gallery item: {describe_error(error)}") from None
    except OSError as error:
        raise DataError(f"'{path}' cannot be read ({type(error).__name__}: {error})") from None


def describe_error(error: ValidationError) -> str:
    """The first problem of ``error`` as ``key: expected …, got …``, and how many more there are."""
    problems = error.errors(include_url=False)
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        text = f"{key}: missing"
    elif first["type"] == "json_invalid":
        text = f"not valid JSON ({first['ctx']['error']})"
    elif first["type"] == "value_error":  # a validator's own message names the key and what it expected
        text = str(first["msg"]).removeprefix("Value error, ")
    else:
        expected = str(first["msg"]).replace("Input should be ", "expected ", 1)
        text = f"{key + ': ' if key else ''}{expected}, got {_shown(first.get('input'))}"
    more = len(problems) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
