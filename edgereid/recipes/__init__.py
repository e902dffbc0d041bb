"""Recipes: one YAML file says what to train on, which model, which losses and how; validated before anything runs.

``load_recipe`` reads a file (or the name of a shipped recipe), follows its `_base_` chain, expands
``${VAR:-default}``, applies ``--set`` overrides and validates the result, so a mistake fails with its key path
before a single image is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from edgereid.errors import ConfigError
from edgereid.recipes.loader import apply_overrides, expand_environment, read_yaml_with_bases, validate
from edgereid.recipes.schema import DataConfig, Recipe, SolverConfig, TrainConfig

# The repository's recipes/ folder: shipped recipes can be named without their path (`edgereid train quickstart`).
SHIPPED_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def shipped_recipes() -> list[str]:
    """Names of the recipes in the repository's recipes/ folder (empty when edgereid runs from a wheel)."""
    if not SHIPPED_RECIPES.is_dir():
        return []
    return sorted(path.stem for path in SHIPPED_RECIPES.glob("*.yaml") if not path.stem.startswith("_"))


def resolve_recipe_path(recipe: str | Path) -> Path:
    """``recipe`` as a path to an existing file: a path as given, or the name of a shipped recipe."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = SHIPPED_RECIPES / f"{recipe}.yaml"
    if path.suffix == "" and shipped.is_file():
        return shipped
    names = shipped_recipes()
    known = f"; shipped recipes: {', '.join(names)}" if names else ""
    raise ConfigError(f"recipe '{recipe}' is neither a file nor the name of a shipped recipe{known}")


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, merge, expand, override and validate a recipe; errors name the file and the key path."""
    path = resolve_recipe_path(recipe)
    content = apply_overrides(read_yaml_with_bases(path), tuple(overrides))
    return validate(Recipe, expand_environment(content), f"recipe '{path}'")


def recipe_from_dict(content: dict[str, object], source: str = "recipe") -> Recipe:
    """Validate an already-resolved recipe (as saved in a run directory or a checkpoint)."""
    return validate(Recipe, content, source)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML: every default spelled out, no `_base_`, ready to train from again."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


__all__ = [
    "SHIPPED_RECIPES",
    "DataConfig",
    "Recipe",
    "SolverConfig",
    "TrainConfig",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_yaml",
    "resolve_recipe_path",
    "shipped_recipes",
]
