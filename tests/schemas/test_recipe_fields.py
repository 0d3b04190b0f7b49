"""What recipe fields declare about themselves: check plug-ins under `checks`, the hash
markers the hash walker follows, path fields found by walking the model, one labelled-source
spec shared by every block that reads labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, Field

from synthgen.schemas.recipe import (
    PATH_FIELDS,
    BalanceSpec,
    ChecksSpec,
    ConditioningSourceSpec,
    HashOmit,
    LabelledSource,
    Recipe,
    RecipeError,
    RecipePath,
    ReferenceSpec,
    hashed_fields,
    load_recipe,
    path_fields,
    read_recipe_dict,
    recipe_from_dict,
)
from tests.schemas.test_recipe_hash import PINNED_RECIPES, RECIPES


def _digits() -> dict[str, Any]:
    return read_recipe_dict(RECIPES / "digits.yaml")


# -- check plug-ins ------------------------------------------------------------------------


def test_checks_take_plugin_keys_with_options_or_null() -> None:
    data = _digits()
    data["checks"]["watermark_seen"] = {"max_score": 0.5}
    data["checks"]["my-check"] = None
    recipe = recipe_from_dict(data)
    options = recipe.checks.plugin_options()
    assert options == {"watermark_seen": {"max_score": 0.5}, "my-check": None}
    assert ChecksSpec().plugin_options() == {}
    assert recipe.checks.clip_score is not None and recipe.checks.clip_score.absolute == 0.2


def test_plugin_checks_are_hashed_only_when_present() -> None:
    base = recipe_from_dict(_digits()).hash
    assert base == PINNED_RECIPES["digits.yaml"]
    hashes = set()
    for options in (None, {"max_score": 0.5}, {"max_score": 0.6}):
        data = _digits()
        data["checks"]["watermark_seen"] = options
        hashes.add(recipe_from_dict(data).hash)
    assert len(hashes) == 3 and base not in hashes


def test_plugin_options_are_a_copy() -> None:
    data = _digits()
    data["checks"]["watermark_seen"] = {"max_score": 0.5}
    recipe = recipe_from_dict(data)
    recipe.checks.plugin_options()["watermark_seen"]["max_score"] = 9  # type: ignore[index]
    assert recipe.checks.plugin_options() == {"watermark_seen": {"max_score": 0.5}}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("checks.Bad_Name=null", r"checks.Bad_Name: a check plug-in's name is a slug"),
        ("checks.my_check=3", r"checks.my_check: a check plug-in's options are a mapping or null"),
        ("checks.my_check=[a]", r"checks.my_check: .*mapping or null, not list"),
        ("checks.clip_scor=null", r"checks.clip_scor: unknown field \(did you mean 'clip_score'"),
        ("checks.near_copi={}", r"checks.near_copi: unknown field \(did you mean 'near_copy'\?\)"),
    ],
)
def test_bad_plugin_keys_are_named(item: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(RECIPES / "digits.yaml", [item])


def test_plugin_keys_in_python() -> None:
    assert ChecksSpec(odd_size=False, **{"my_check": {"a": 1}}).plugin_options() == {  # type: ignore[arg-type]
        "my_check": {"a": 1}
    }


# -- hash markers --------------------------------------------------------------------------


class _Inner(BaseModel):
    a: int = 1
    later: Annotated[int | None, HashOmit.IF_EMPTY] = None


class _Outer(BaseModel):
    inner: _Inner = _Inner()
    items: list[_Inner] = []
    by_name: dict[str, _Inner] = {}
    grouping: Annotated[int, HashOmit.ALWAYS] = 0
    mode: Annotated[str, HashOmit.IF_DEFAULT] = "plain"


def test_the_walker_follows_markers_through_models_lists_and_dicts() -> None:
    value = _Outer(items=[_Inner(), _Inner(later=2)], by_name={"x": _Inner(a=3)}, grouping=7)
    assert hashed_fields(value) == {
        "inner": {"a": 1},
        "items": [{"a": 1}, {"a": 1, "later": 2}],
        "by_name": {"x": {"a": 3}},
    }
    assert hashed_fields(_Outer(mode="fancy"))["mode"] == "fancy"


class _Later(Recipe):
    """A recipe with fields added after the shipped recipes were hashed."""

    marked: Annotated[dict[str, int], HashOmit.IF_EMPTY] = Field(default_factory=dict)
    marked_default: Annotated[float, HashOmit.IF_DEFAULT] = 0.5


class _LaterUnmarked(Recipe):
    unmarked: float = 0.5


@pytest.mark.parametrize("name", sorted(PINNED_RECIPES))
def test_a_new_marked_field_leaves_existing_hashes_alone(name: str) -> None:
    data = read_recipe_dict(RECIPES / name)
    assert _Later.model_validate(data).hash == PINNED_RECIPES[name]
    assert _Later.model_validate({**data, "marked_default": 0.5}).hash == PINNED_RECIPES[name]
    assert _Later.model_validate({**data, "marked": {"a": 1}}).hash != PINNED_RECIPES[name]
    assert _Later.model_validate({**data, "marked_default": 0.7}).hash != PINNED_RECIPES[name]


def test_an_unmarked_new_field_changes_the_hash() -> None:
    data = _digits()
    assert _LaterUnmarked.model_validate(data).hash != PINNED_RECIPES["digits.yaml"]


def test_the_beam_batch_is_never_hashed() -> None:
    data = _digits()
    assert recipe_from_dict({**data, "batch_size": 7}).hash == PINNED_RECIPES["digits.yaml"]
    assert "batch_size" not in hashed_fields(recipe_from_dict(data))


# -- path fields ---------------------------------------------------------------------------


def test_path_fields_are_found_by_walking_the_model() -> None:
    class _Spec(BaseModel):
        where: RecipePath
        files: list[RecipePath] = []
        maybe: RecipePath | None = None
        name: str = ""

    class _Top(BaseModel):
        one: _Spec
        many: dict[str, _Spec] = {}

    assert tuple(path_fields(_Top)) == (
        ("one", "where"),
        ("one", "files", "*"),
        ("one", "maybe"),
        ("many", "*", "where"),
        ("many", "*", "files", "*"),
        ("many", "*", "maybe"),
    )
    for parts in [("model", "path"), ("adapters", "0", "path"), ("output", "c2pa", "key")]:
        assert parts in PATH_FIELDS
    assert ("classes", "3", "adapters", "1", "path") in PATH_FIELDS
    assert ("adapters", "0", "scale") not in PATH_FIELDS
    assert ("adapters", "path") not in PATH_FIELDS


def _recipe_with_every_path_block(tmp_path: Path) -> Path:
    data = _digits()
    data["adapters"] = [{"path": "adapters/style.safetensors"}]
    data["classes"][1]["adapters"] = [{"path": "adapters/one.safetensors"}]
    data["conditioning"] = {
        "mode": "ip_adapter",
        "source": {"path": "data/digits-train.parquet"},
        "ip_adapter": {"path": "models/ip", "image": "data/prompt.png"},
    }
    data["output"]["c2pa"] = {"cert_chain": "keys/chain.pem", "key": "keys/key.pem"}
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "r.yaml").write_text(yaml.safe_dump(data))
    return folder / "r.yaml"


SET_PATHS = [
    ("adapters.0.path", "mine.safetensors", lambda r: r.adapters[0].path),
    ("classes.1.adapters.0.path", "mine.safetensors", lambda r: r.classes[1].adapters[0].path),
    ("conditioning.ip_adapter.path", "ip", lambda r: r.conditioning.ip_adapter.path),
    ("conditioning.ip_adapter.image", "p.png", lambda r: r.conditioning.ip_adapter.image),
    ("conditioning.source.path", "d.parquet", lambda r: r.conditioning.source.path),
    ("output.c2pa.key", "k.pem", lambda r: r.output.c2pa.key),
    ("output.c2pa.cert_chain", "c.pem", lambda r: r.output.c2pa.cert_chain),
    ("reference.source", "ref.parquet", lambda r: r.reference.source),
]


@pytest.mark.parametrize(("key", "value", "read"), SET_PATHS, ids=[s[0] for s in SET_PATHS])
def test_set_resolves_every_path_field_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, read: Any
) -> None:
    recipe_file = _recipe_with_every_path_block(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe, base = load_recipe(recipe_file, [f"{key}={value}"])
    assert read(recipe) == str(elsewhere / value)
    assert base == recipe_file.parent
    unset, _ = load_recipe(recipe_file)
    assert not Path(read(unset)).is_absolute(), "a path from the file stays relative to it"
    url, _ = load_recipe(recipe_file, [f"{key}=s3://bucket/{value}"])
    assert read(url) == f"s3://bucket/{value}"


def test_set_resolves_controlnet_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _digits()
    data["conditioning"] = {
        "mode": "controlnet",
        "source": {"path": "data/digits-train.parquet"},
        "controlnets": [{"path": "models/cn"}, {"path": "models/cn2", "image": "pose.png"}],
    }
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sets = ["conditioning.controlnets.0.path=cn", "conditioning.controlnets.1.image=edges.png"]
    recipe, _ = load_recipe(recipe_file, sets)
    assert recipe.conditioning is not None
    nets = recipe.conditioning.controlnets
    assert nets[0].path == str(elsewhere / "cn")
    assert nets[1].image == str(elsewhere / "edges.png")
    assert nets[1].path == "models/cn2"


def test_set_of_a_whole_block_resolves_the_paths_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_file = _recipe_with_every_path_block(tmp_path)
    monkeypatch.chdir(tmp_path)
    recipe, _ = load_recipe(
        recipe_file,
        ["adapters=[{path: a.safetensors, scale: 0.5}]", "reference={source: ref, max_images: 3}"],
    )
    assert recipe.adapters[0].path == str(tmp_path / "a.safetensors")
    assert recipe.reference is not None and recipe.reference.source == str(tmp_path / "ref")
    assert recipe.reference.max_images == 3


def test_the_cli_note_names_the_working_directory_for_a_nested_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthgen.pipelines.cli import _set_path_note

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "x.safetensors"
    note = _set_path_note(f"{missing}: not found", ["adapters.0.path=x.safetensors"])
    assert str(tmp_path) in note and "--set adapters.0.path=x.safetensors" in note


# -- one labelled-source spec --------------------------------------------------------------


def test_every_labelled_source_shares_one_spec() -> None:
    shared = list(LabelledSource.model_fields)
    assert shared == ["format", "label_column", "image_column", "label_type"]
    for spec, location in (
        (BalanceSpec, "source"),
        (ReferenceSpec, "source"),
        (ConditioningSourceSpec, "path"),
    ):
        assert issubclass(spec, LabelledSource)
        fields = list(spec.model_fields)
        assert fields[: len(shared) + 1] == [location, *shared], spec.__name__
        value = spec.model_validate({location: "data/x.parquet"})
        assert value.location == "data/x.parquet"
        assert (value.format, value.label_column, value.image_column, value.label_type) == (
            "auto",
            "label",
            "image",
            "auto",
        )
