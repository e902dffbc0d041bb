"""Reading recipe files: YAML, `_base_` inheritance, `${VAR:-default}` expansion, `--set a.b=c` overrides, and
validation errors that name the key path and suggest the key that was probably meant."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgereid.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)
BASE_KEY = "_base_"
_SHOWN_VALUE_CHARS = 80
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def read_yaml_with_bases(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in ``path`` merged over its `_base_` file(s), which are resolved relative to ``path``."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " → ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"recipe inheritance loops: {chain}")
    if not path.is_file():
        raise ConfigError(f"recipe file '{path}' does not exist")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"recipe file '{path}' cannot be read ({type(error).__name__}: {error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"recipe file '{path}' is not a recipe: it is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe file '{path}' is not valid YAML: {_describe_yaml_error(error)}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"recipe file '{path}' must hold a mapping at the top level, not {type(content).__name__}")
    bases = content.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(
            f"recipe file '{path}': {BASE_KEY} must be a recipe file name or a list of them, got {bases!r}"
        )
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, read_yaml_with_bases(path.parent / base, (*_seen, path)))
    return deep_merge(merged, content)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    """PyYAML's message (problem, then where it was found, over several lines) on one line."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(content: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are read as YAML (so `0.1` is a float and `[1, 2]` a list)."""
    result = dict(content)
    for override in overrides:
        dotted, sep, raw = override.partition("=")
        if not sep or not dotted:
            raise ConfigError(f"override {override!r} is not KEY.PATH=VALUE (e.g. solver.lr=0.001)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML: {error}") from None
        keys = dotted.split(".")
        patch: dict[str, Any] = {keys[-1]: value}
        for key in reversed(keys[:-1]):
            patch = {key: patch}
        # Replace leaves outright: `--set model.backbone=x` must not merge into an old mapping value.
        result = deep_merge(result, patch)
    return result


def expand_environment(value: Any) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string, so recipes can point at data without fixed paths."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match["name"], match["default"]
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise ConfigError(f"recipe refers to ${{{name}}}, which is not set; set it or write ${{{name}:-default}}")
            return default

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_environment(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v) for v in value]
    return value


def validate(model: type[ModelT], content: Mapping[str, Any], source: str) -> ModelT:
    try:
        return model.model_validate(content)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, model, source)) from None


def describe_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line: the source, then each invalid value's key path, what was wrong and the value given."""
    problems = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        path = ".".join(location)
        if problem["type"] == "extra_forbidden":
            known = _field_names_at(model, location[:-1])
            close = difflib.get_close_matches(location[-1], known, n=1)
            hints = [f"did you mean '{'.'.join([*location[:-1], close[0]])}'?"] if close else []
            if known:
                hints.append(f"allowed here: {', '.join(sorted(known))}")
            problems.append(f"{path}: unknown key" + (f" ({' '.join(hints)})" if hints else ""))
        else:
            given = problem.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {_shown(given)})"
            message = problem["msg"].removeprefix("Value error, ")
            # A check across several keys has no single location; its message names the keys itself.
            problems.append(f"{path}: {message}{shown}" if path else message)
    count = error.error_count()
    return f"{source}: {count} invalid value{'s' if count > 1 else ''}: {'; '.join(problems)}"


def _shown(value: object) -> str:
    """A value as the message shows it: short enough to keep the error on one readable line."""
    text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else f"{text[:_SHOWN_VALUE_CHARS]}..."


def _field_names_at(model: type[BaseModel], location: list[str]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in location:
        if current is None or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    return list(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for argument in typing.get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None
