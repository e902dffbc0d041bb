"""Reading the JSON objects edgereid's file formats are made of (bundle manifests, gallery headers): whatever is
wrong with the file — unreadable, not UTF-8, not JSON, not an object — is one DataError line naming it and what it
should have been."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgereid.errors import DataError


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the file ``path``, which should be ``what`` (e.g. "a bundle manifest")."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"'{path}' cannot be read ({type(error).__name__}: {error.strerror or error})") from None
    return parse_json_object(data, path, what)


def parse_json_object(data: bytes, path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``data``, the bytes of the file ``path``, which should be ``what``."""
    try:
        content = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not {what}: it is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"'{path}' is not {what}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(content, dict):
        raise DataError(f"'{path}' is not {what}: expected a JSON object, got {json_type(content)}")
    return content


def json_type(value: Any) -> str:
    """What a JSON value is, in words, for messages."""
    if isinstance(value, list):
        return "a JSON list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"
