"""Loading a recipe: from a file or a dict, with `--set` overrides, validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from synthgen.schemas.recipe.common import _URL, MAX_RECIPE_BYTES, RecipeError, shown_url
from synthgen.schemas.recipe.errors import format_validation_error
from synthgen.schemas.recipe.overrides import apply_overrides, overridden_fields
from synthgen.schemas.recipe.recipe import Recipe
from synthgen.schemas.recipe.yaml_safe import safe_load


def recipe_from_dict(
    data: Any, source: str = "<recipe>", overridden: dict[str, str] | None = None
) -> Recipe:
    """Validate a recipe; `overridden` (dotted field -> the `--set` item) lets an error in
    a field set on the command line name the `--set` rather than `source`."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source, overridden)) from None


def read_recipe_dict(path: Path) -> dict[str, Any]:
    """Read a recipe file with a safe loader that also refuses duplicate keys and tags."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: recipe file is larger than {MAX_RECIPE_BYTES} bytes")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        data = safe_load(text, str(path))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid recipe YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Load, override and validate a recipe; returns it and the folder its paths resolve from."""
    path = Path(path)
    data = read_recipe_dict(path)
    data = apply_overrides(data, overrides or [], Path.cwd())
    return recipe_from_dict(
        data, str(path), overridden_fields(overrides or [])
    ), path.resolve().parent


def load_recipe_source(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> tuple[Recipe, Path]:
    """A recipe from a file (paths relative to it) or a dict (paths relative to the cwd)."""
    if isinstance(source, dict):
        data = apply_overrides(source, overrides or [], Path.cwd())
        return recipe_from_dict(
            data, "<recipe dict>", overridden_fields(overrides or [])
        ), Path.cwd()
    return load_recipe(source, overrides)


def resolve_path(base_dir: Path, value: str) -> Path:
    """A local path named in a recipe: absolute, or relative to `base_dir` (the recipe's
    folder). A URL is refused by name here (`file://` is its local path): a folder that
    must be read locally cannot be an `s3://` one."""
    url = _URL.fullmatch(value)
    if url is not None:
        if url.group(1) == "file":
            return Path(url.group(3))
        raise RecipeError(
            f"{shown_url(value)}: a URL where a local path is needed (model, CLIP, adapter "
            "and credential folders are read from this machine)"
        )
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()
