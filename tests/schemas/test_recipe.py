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
    fixed = ["scoring.batch_size=4"]  # the scorers' shape given: batching changes nothing made
    base, _ = load_recipe(recipe_file, fixed)
    rebatched, _ = load_recipe(recipe_file, [*fixed, "batch_size=3"])
    reseeded, _ = load_recipe(recipe_file, [*fixed, "seed=8"])
    recompute, _ = load_recipe(recipe_file, [*fixed, "model.compute_batch=2"])
    rescore, _ = load_recipe(recipe_file, ["scoring.batch_size=2"])
    assert rebatched.hash == base.hash
    assert reseeded.hash != base.hash
    assert recompute.hash != base.hash
    assert rescore.hash != base.hash


def test_the_scorers_shape_follows_the_beam_batch_unless_given(recipe_file: Path) -> None:
    base, _ = load_recipe(recipe_file)  # batch_size 4, scoring.batch_size unset
    assert base.scoring.batch_size is None and base.scoring_batch == base.batch_size == 4
    same, _ = load_recipe(recipe_file, ["scoring.batch_size=4"])
    assert same.hash == base.hash, "an unset shape hashes as the one it resolves to"
    rebatched, _ = load_recipe(recipe_file, ["batch_size=8"])
    assert rebatched.scoring_batch == 8 and rebatched.hash != base.hash


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


# -- bounded input (issue 18, defects 4 and 7) ----------------------------------------------


def _tiny_yaml(model_dir: Path, extra: str = "") -> str:
    import yaml

    return yaml.safe_dump(tiny_recipe_dict(model_dir), sort_keys=False) + extra


def _alias_bomb(levels: int, width: int = 10) -> str:
    """`levels` nested anchors, each a list of `width` aliases of the one before."""
    lines = ["bomb0: &b0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"bomb{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_refused_before_expansion(tmp_path: Path, model_dir: Path) -> None:
    import time

    # 10**6 leaves (~1.1M nodes): the old --set copy expanded it fully (json.dumps);
    # 9 levels would be 10**9, hundreds of GB. Both are refused from the parsed size.
    for levels in (6, 9):
        p = tmp_path / f"bomb{levels}.yaml"
        p.write_text(_tiny_yaml(model_dir, _alias_bomb(levels)), encoding="utf-8")
        began = time.monotonic()
        with pytest.raises(RecipeError, match=r"expands to more than 1000000 YAML nodes"):
            load_recipe(p, ["seed=3"])
        assert time.monotonic() - began < 5


def test_recursive_alias_and_deep_nesting_refused(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(RecipeError, match="recursive alias"):
        _load(tmp_path, _tiny_yaml(model_dir, "loop: &l [*l]\n"))
    with pytest.raises(RecipeError, match="nested deeper than 64 levels"):
        _load(tmp_path, _tiny_yaml(model_dir, "deep: " + "[" * 100 + "]" * 100 + "\n"))
    with pytest.raises(RecipeError, match="nested deeper than 64 levels"):
        _load(tmp_path, _tiny_yaml(model_dir, "deep: " + "[" * 5000 + "]" * 5000 + "\n"))


def test_small_anchors_still_work(tmp_path: Path, model_dir: Path) -> None:
    import yaml

    data = tiny_recipe_dict(model_dir)
    del data["classes"]
    text = yaml.safe_dump(data) + (
        "classes:\n"
        "  - {id: 0, name: zero, prompts: &digits [a handwritten digit, a number]}\n"
        "  - {id: 1, name: one, prompts: *digits}\n"
    )
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    r, _ = load_recipe(p, ["seed=1"])
    assert r.classes[1].prompts == ["a handwritten digit", "a number"] == r.classes[0].prompts


def test_oversized_recipe_file_refused(tmp_path: Path, model_dir: Path) -> None:
    padding = "# " + "x" * 1000 + "\n"
    with pytest.raises(RecipeError, match=r"larger than 1048576 bytes"):
        _load(tmp_path, _tiny_yaml(model_dir) + padding * 1100)


def test_override_copy_keeps_values_and_refuses_non_json_cleanly(
    recipe_file: Path, tmp_path: Path
) -> None:
    from synthgen.schemas.recipe import apply_overrides

    data = {"a": {1: "one", None: "no", 2.5: "x"}, "b": [1, {"c": None}]}
    out = apply_overrides(data, ["b.1.c=2"], tmp_path)
    assert out == {"a": {"1": "one", "null": "no", "2.5": "x"}, "b": [1, {"c": 2}]}
    assert data["b"][1] == {"c": None}, "the input is not modified"
    # a YAML date is no JSON value: the old json round-trip crashed with TypeError
    text = recipe_file.read_text().replace("seed: 7", "seed: 2024-01-01")
    p = tmp_path / "dated.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=r"seed: Input should be a valid integer"):
        load_recipe(p, ["batch_size=2"])


def test_counts_have_a_documented_maximum(model_dir: Path) -> None:
    from synthgen.schemas.recipe import MAX_COUNT_PER_CLASS, MAX_PLANNED_SAMPLES

    data = tiny_recipe_dict(model_dir, count_per_class=1_000_000_000)
    with pytest.raises(RecipeError, match=rf"count_per_class: .*{MAX_COUNT_PER_CLASS}"):
        recipe_from_dict(data)
    classes = [{"id": i, "name": f"c{i}", "prompts": ["x"]} for i in range(20)]
    data = tiny_recipe_dict(model_dir, count_per_class=60_000_000, classes=classes)
    with pytest.raises(
        RecipeError,
        match=rf"count_per_class: 60000000 x 20 classes = 1200000000 planned samples, "
        rf"over the maximum of {MAX_PLANNED_SAMPLES}",
    ):
        recipe_from_dict(data)
    balance = {"source": "s", "target": MAX_COUNT_PER_CLASS + 1}
    with pytest.raises(RecipeError, match=rf"balance.target: .*at most {MAX_COUNT_PER_CLASS}"):
        recipe_from_dict(tiny_recipe_dict(model_dir, count_per_class=None, balance=balance))


def test_lone_surrogate_prompt_refused_naming_class_and_prompt(
    tmp_path: Path, model_dir: Path
) -> None:
    import yaml

    data = tiny_recipe_dict(model_dir)
    del data["classes"]
    text = yaml.safe_dump(data) + (
        "classes:\n"
        "  - {id: 0, name: one, prompts: [fine]}\n"
        '  - {id: 1, name: two, prompts: [fine, "bad \\ud800 prompt"]}\n'
    )
    with pytest.raises(
        RecipeError, match=r"classes.1.prompts: .*class 'two', prompt 1 \('bad \\ud800 prompt'\)"
    ):
        _load(tmp_path, text)


def test_non_utf8_text_refused_anywhere(recipe_file: Path, model_dir: Path) -> None:
    with pytest.raises(RecipeError, match=r"sampling.negative_prompt: not valid UTF-8 text"):
        load_recipe(recipe_file, ['sampling.negative_prompt="\\udfff"'])
    data = tiny_recipe_dict(model_dir)
    data["scoring"]["scorers"] = [{"name": "clip", "options": {"note": "\ud83d"}}]
    with pytest.raises(RecipeError, match=r"scoring.scorers.0.options.note: not valid UTF-8"):
        recipe_from_dict(data)


def test_many_classes_validate_and_look_up_fast(model_dir: Path) -> None:
    import time

    classes = [{"id": i, "name": f"c{i}", "prompts": ["x"]} for i in range(10_000)]
    began = time.monotonic()
    r = recipe_from_dict(tiny_recipe_dict(model_dir, classes=classes))
    assert all(r.class_by_id(i).name == f"c{i}" for i in range(10_000))
    assert r.classes_by_id is r.classes_by_id  # built once
    assert time.monotonic() - began < 5


def test_override_copy_of_a_self_referring_dict_is_refused(tmp_path: Path) -> None:
    from synthgen.schemas.recipe import apply_overrides

    data: dict = {"classes": []}
    data["classes"].append(data)
    with pytest.raises(RecipeError, match="refers to itself"):
        apply_overrides(data, [], tmp_path)
