from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.schemas.recipe import RecipeError, load_recipe, recipe_from_dict
from tests.conftest import tiny_recipe_dict, write_recipe


def _load(tmp_path: Path, text: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    load_recipe(p)


def test_loads_and_hash_is_stable(recipe_file: Path) -> None:
    a, base = load_recipe(recipe_file)
    b, _ = load_recipe(recipe_file)
    assert a.hash == b.hash and len(a.hash) == 64
    assert base == recipe_file.parent.resolve()
    assert a.sampling.scheduler == "dpm-solver++"


def test_hash_ignores_beam_batching_but_not_content(recipe_file: Path) -> None:
    base, _ = load_recipe(recipe_file)
    rebatched, _ = load_recipe(recipe_file, ["batch_size=3"])
    reseeded, _ = load_recipe(recipe_file, ["seed=8"])
    recompute, _ = load_recipe(recipe_file, ["model.compute_batch=2"])
    rescore, _ = load_recipe(recipe_file, ["scoring.batch_size=2"])
    assert rebatched.hash == base.hash
    assert reseeded.hash != base.hash
    assert recompute.hash != base.hash
    assert rescore.hash != base.hash


def test_overrides_are_typed_and_validated(recipe_file: Path) -> None:
    r, _ = load_recipe(recipe_file, ["count_per_class=9", "classes.1.prompts=[a, b]"])
    assert r.count_per_class == 9
    assert r.classes[1].prompts == ["a", "b"]
    with pytest.raises(RecipeError, match="count_per_class"):
        load_recipe(recipe_file, ["count_per_class=many"])
    with pytest.raises(RecipeError, match=r"sampling.colour: unknown field"):
        load_recipe(recipe_file, ["sampling.colour=red"])
    with pytest.raises(RecipeError, match=r"expected dotted.key=value"):
        load_recipe(recipe_file, ["seed"])


def test_override_paths_are_relative_to_cwd(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r, _ = load_recipe(recipe_file, ["model.path=elsewhere/sd"])
    assert r.model.path == str(tmp_path / "elsewhere" / "sd")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"colour: unknown field"),
        ({"count_per_class": -3}, r"count_per_class: Input should be greater than or equal to 1"),
        ({"count_per_class": "ten"}, r"count_per_class: Input should be a valid integer"),
        ({"sampling": {"scheduler": "plms"}}, r"sampling.scheduler: .*unknown scheduler 'plms'"),
        ({"sampling": {"height": 30}}, r"sampling.height: .*multiple of 8"),
        ({"name": "Has Spaces"}, r"name: String should match pattern"),
        ({"classes": []}, r"classes: List should have at least 1 item"),
    ],
)
def test_bad_fields_are_named(model_dir: Path, change: dict, message: str) -> None:
    data = tiny_recipe_dict(model_dir)
    data.update(change)
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data, "r.yaml")


def test_duplicate_class_ids_and_names(model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["classes"] = [
        {"id": 0, "name": "a", "prompts": ["x"]},
        {"id": 0, "name": "b", "prompts": ["y"]},
    ]
    with pytest.raises(RecipeError, match="duplicate class id: 0"):
        recipe_from_dict(data)


def test_class_names_with_dots_or_slashes_refused(model_dir: Path) -> None:
    for bad in ("../up", "a.b", "a/b"):
        data = tiny_recipe_dict(model_dir)
        data["classes"] = [{"id": 0, "name": bad, "prompts": ["x"]}]
        with pytest.raises(RecipeError, match=r"classes.0.name"):
            recipe_from_dict(data)


def test_python_tags_are_refused_without_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(RecipeError, match="not valid recipe YAML"):
        _load(tmp_path, text)
    assert not marker.exists()


def test_duplicate_yaml_keys_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="duplicate key 'seed'"):
        _load(tmp_path, "name: a\nseed: 1\nseed: 2\n")


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        _load(tmp_path, "- a\n- b\n")


def test_error_names_the_file(tmp_path: Path, model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["seed"] = "abc"
    p = write_recipe(tmp_path / "named.yaml", data)
    with pytest.raises(RecipeError, match=r"named\.yaml: invalid recipe"):
        load_recipe(p)
