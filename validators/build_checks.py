"""Recipe + declared score columns -> the per-sample checks and the build-wide ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

from synthgen.schemas.recipe import Recipe, RecipeError
from synthgen.schemas.scores import ScoreColumn, image_embedding_column
from synthgen.validators.base import (
    BuildCheck,
    Check,
    CheckPlugin,
    build_check_classes,
    check_classes,
)
from synthgen.validators.nearest import nearest_columns


def uses_embeddings(columns: Sequence[ScoreColumn]) -> bool:
    """Whether the scorers' declared columns include the image embeddings (the vector
    column with the image-embedding role)."""
    return image_embedding_column(columns) is not None


def reference_kinds(recipe: Recipe, columns: Sequence[ScoreColumn]) -> list[str]:
    """Which nearest-image lookups a build does: `reference` (the recipe's, else its balance
    source when the scorers store image embeddings, `columns`) and `eval_set`."""
    kinds = []
    balance_as_reference = recipe.balance is not None and uses_embeddings(columns)
    if recipe.reference is not None or balance_as_reference:
        kinds.append("reference")
    if recipe.eval_set is not None:
        kinds.append("eval_set")
    return kinds


def check_columns(recipe: Recipe, columns: Sequence[ScoreColumn]) -> list[ScoreColumn]:
    """Score columns written by build-wide steps (nearest reference / eval-set image), given
    the scorers' declared `columns`."""
    return [c for kind in reference_kinds(recipe, columns) for c in nearest_columns(kind)]


def embedding_column(columns: Sequence[ScoreColumn]) -> str | None:
    """The image-embedding vector column (the one declaring that role), if any."""
    return image_embedding_column(columns)


def make_checks(
    recipe: Recipe, columns: Sequence[ScoreColumn]
) -> tuple[list[Check], list[BuildCheck]]:
    """The per-sample checks in running order, and the build-wide ones.

    Every registered check class (`validators.base.check_classes`) is asked in its `order`,
    then by name; the first failing check is a sample's reject reason. The built-ins run as:
    `odd_size`, `watermark`, the named threshold checks (`clip_score`, `dark`, ...) in the
    order of the columns backing them (scorer order), `checks.scores` in recipe order (each
    named after its column), `near_copy`, `contaminated`; then plug-in checks by name.
    Build-wide checks: `exact_duplicate`, `near_duplicate`, `semantic_duplicate` (their
    verdict, the sample's `duplicate` outcome, ranks before every per-sample check), the
    per-class quantile cuts (answering for the quantile threshold checks, in their place),
    then plug-ins, whose outcomes follow the per-sample checks.

    A `checks.<name>` key that names no plug-in check, a bad option, or a check needing a
    column no listed scorer writes is a RecipeError naming it.
    """
    classes = check_classes()
    build_classes = build_check_classes()
    _refuse_unknown(recipe, [*classes.values(), *build_classes.values()])
    checks: list[Check] = []
    for cls in classes.values():
        checks += _configured(cls, recipe, columns)
    build: list[BuildCheck] = []
    for build_cls in build_classes.values():
        build += _configured(build_cls, recipe, columns)
    _refuse_clashes(checks, build)
    return checks, build


T = TypeVar("T", bound=CheckPlugin)


def _configured(cls: type[T], recipe: Recipe, columns: Sequence[ScoreColumn]) -> list[T]:
    """What `cls.from_recipe` made, as a list (none, one or several instances)."""
    made = cls.from_recipe(recipe, columns)
    if made is None:
        return []
    return cast(list[T], [made] if isinstance(made, CheckPlugin) else list(made))


def _refuse_unknown(recipe: Recipe, classes: Sequence[type[CheckPlugin]]) -> None:
    """A `checks` key that is neither a built-in field nor a registered plug-in check."""
    plugins = sorted(c.name for c in classes if not c.builtin)
    for name in recipe.checks.plugin_options():
        if name not in plugins:
            known = ", ".join(plugins) or "none registered"
            raise RecipeError(f"checks.{name}: no such check (plug-in checks: {known})")


def _refuse_clashes(checks: Sequence[Check], build: Sequence[BuildCheck]) -> None:
    """Outcome names are unique: a build-wide check with its own outcome may share its name
    only with the per-sample check it answers for (`decided_build_wide`)."""
    seen: dict[str, str] = {}
    for check in checks:
        if check.name in seen:
            raise RecipeError(f"checks.{check.name}: two checks record this outcome")
        seen[check.name] = "deferred" if check.decided_build_wide else "own"
    for b in build:
        if b.duplicate:
            continue
        if seen.get(b.name) == "own" or seen.get(b.name) == "build":
            raise RecipeError(f"checks.{b.name}: two checks record this outcome")
        seen[b.name] = "build"


def recipe_checks(
    recipe: Recipe, scorer_columns: Sequence[ScoreColumn]
) -> tuple[list[Check], list[BuildCheck]]:
    """`make_checks` over the scorers' declared columns and those the build-wide steps add:
    on the driver, before any output, every `checks.*` option is checked."""
    return make_checks(recipe, [*scorer_columns, *check_columns(recipe, scorer_columns)])
