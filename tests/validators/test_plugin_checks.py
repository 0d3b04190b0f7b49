"""Check plug-ins added from outside the package: a per-sample check and a build-wide one,
each with its own options model, defined here and nowhere else, enabled by the recipe's
`checks` block and run by a tiny real build."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field

from synthgen.pipelines.build import run_build
from synthgen.schemas.recipe import Recipe, RecipeError, recipe_from_dict
from synthgen.schemas.records import Sample
from synthgen.validators.base import BuildCheck, BuildFeatures, Check, check_classes
from synthgen.validators.build_checks import make_checks
from tests.conftest import read_rows, tiny_recipe_dict, write_recipe


class ClassOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: list[str] = Field(min_length=1)


class RejectClasses(Check):
    """Rejects every sample of the listed classes."""

    name = "my_check"
    options_model = ClassOptions
    loads: ClassVar[int] = 0

    def __init__(self, options: ClassOptions):
        self.classes = set(options.classes)
        self.loaded = False

    def load(self) -> None:
        type(self).loads += 1
        self.loaded = True

    def reason(self, sample: Sample) -> str | None:
        return "unwanted_class" if sample.request.class_name in self.classes else None


class KeepOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_per_class: int = Field(ge=0)


class KeepFirstKeys(BuildCheck):
    """Per class over the whole build: keeps the `keep_per_class` smallest keys."""

    name = "my_build_check"
    options_model = KeepOptions

    def __init__(self, options: KeepOptions):
        self.keep = options.keep_per_class

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        return (features.class_label,)

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        keys = sorted({f.key for f in features})
        return [(key, "over_class_budget") for key in keys[self.keep :]]


def _recipe(model_dir: Path, **plugins: object) -> dict[str, object]:
    # no CLIP threshold: only the plug-ins (and the built-in defaults) decide
    return tiny_recipe_dict(model_dir, count_per_class=3, checks={"clip_score": None, **plugins})


def test_plugins_register_and_run_after_the_builtin_checks(model_dir: Path) -> None:
    assert check_classes()["my_check"] is RejectClasses
    recipe = recipe_from_dict(
        _recipe(model_dir, my_check={"classes": ["zero"]}, my_build_check={"keep_per_class": 1})
    )
    checks, build_checks = make_checks(recipe, [])
    assert [c.name for c in checks] == ["odd_size", "my_check"]
    assert [b.name for b in build_checks] == ["exact_duplicate", "my_build_check"]
    assert isinstance(build_checks[1], KeepFirstKeys) and build_checks[1].keep == 1
    assert not any(isinstance(c, RejectClasses) for c in make_checks(_plain(model_dir), [])[0])


def _plain(model_dir: Path) -> Recipe:
    return recipe_from_dict(_recipe(model_dir))


def test_a_tiny_build_records_the_plugins_reasons(model_dir: Path, tmp_path: Path) -> None:
    data = _recipe(model_dir, my_check={"classes": ["zero"]}, my_build_check={"keep_per_class": 2})
    out = tmp_path / "out"
    run_build(write_recipe(tmp_path / "recipe.yaml", data), out, show_progress=False)
    rows = {r["key"]: r for r in read_rows(out).to_pylist()}
    got = {k: (r["status"], r["reject_reason"]) for k, r in rows.items()}
    rejected_class = ("rejected", "unwanted_class")
    over = ("rejected", "over_class_budget")
    accepted = ("accepted", None)
    assert got == {
        "tiny-zero-000000": rejected_class,
        "tiny-zero-000001": rejected_class,
        # fails both: the per-sample check ranks before a build-wide plug-in's outcome
        "tiny-zero-000002": rejected_class,
        "tiny-one-000000": accepted,
        "tiny-one-000001": accepted,
        "tiny-one-000002": over,
        "tiny-two-000000": accepted,
        "tiny-two-000001": accepted,
        "tiny-two-000002": over,
    }
    outcomes = {c["name"]: c["outcome"] for c in rows["tiny-zero-000002"]["checks"]}
    assert outcomes["my_check"] == "unwanted_class"
    assert outcomes["my_build_check"] == "over_class_budget"
    assert outcomes["duplicate"] == "pass"
    kept = {c["name"]: c["outcome"] for c in rows["tiny-one-000000"]["checks"]}
    assert kept["my_check"] == kept["my_build_check"] == "pass"
    assert RejectClasses.loads >= 1, "the deciding step loads a check before using it"


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"my_check": {"classes": []}}, r"checks\.my_check: classes: .*at least 1"),
        ({"my_check": {"classes": ["zero"], "colour": 1}}, r"checks\.my_check: colour: Extra"),
        ({"my_check": None}, r"checks\.my_check: classes: Field required"),
        ({"my_build_check": {"keep_per_class": -1}}, r"checks\.my_build_check: keep_per_class"),
        ({"sparkle_filter": {}}, r"checks\.sparkle_filter: no such check.*my_check"),
    ],
)
def test_a_bad_plugin_option_fails_before_any_output(
    model_dir: Path, tmp_path: Path, plugins: dict[str, object], message: str
) -> None:
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", _recipe(model_dir, **plugins))
    with pytest.raises(RecipeError, match=message):
        run_build(recipe, out, show_progress=False)
    assert not out.exists()
