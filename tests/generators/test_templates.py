"""Prompt templates and per-class settings: pure functions of (recipe seed, key), every
expansion checked against the blocklist when the recipe is read."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from synthgen.generators.planning import plan
from synthgen.generators.templates import all_prompts, resolve_sample
from synthgen.pipelines.cli import main
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from tests.conftest import tiny_recipe_dict, write_recipe

BACKGROUNDS = ["on a desk", "on a wall", "on paper", "in the sand"]
LIGHTING = ["at noon", "at dusk", "by candlelight"]


def _templated(model_dir: Path, **extra: object) -> dict[str, object]:
    data = tiny_recipe_dict(model_dir)
    data["slots"] = {"background": BACKGROUNDS, "lighting": LIGHTING}
    data["classes"] = [
        {"id": 0, "name": "zero", "prompts": ["a photo of a {class}, {background}, {lighting}"]},
        {
            "id": 1,
            "name": "one",
            "prompts": ["a {style} digit one {background}"],
            "slots": {"style": ["bold", "thin"], "background": ["on slate"]},
            "negative_prompt": "smudged",
            "guidance_scale": 4.5,
            "steps": 3,
        },
        {"id": 2, "name": "two", "prompts": ["a handwritten digit 2"]},
    ]
    data["count_per_class"] = 60
    data.update(extra)
    return data


def test_expansion_is_a_pure_function_of_seed_and_key(model_dir: Path) -> None:
    recipe = recipe_from_dict(_templated(model_dir))
    first = plan(recipe)
    assert plan(recipe) == first  # same recipe: same prompts, slots, settings
    zero = [r for r in first if r.class_name == "zero"]
    slots = [json.loads(r.prompt_slots or "{}") for r in zero]
    # keys spread over every slot value
    assert set(Counter(s["background"] for s in slots)) == set(BACKGROUNDS)
    assert set(Counter(s["lighting"] for s in slots)) == set(LIGHTING)
    for r, s in zip(zero, slots, strict=True):
        assert r.prompt == f"a photo of a zero, {s['background']}, {s['lighting']}"
        assert r.prompt_template == "a photo of a {class}, {background}, {lighting}"
        assert set(s) == {"class", "background", "lighting"}
        again = resolve_sample(recipe, recipe.classes[0], r.key, r.seed)
        assert again.prompt == r.prompt
    # another recipe seed: other choices for the same keys
    other = plan(recipe_from_dict(_templated(model_dir, seed=8)))
    assert [r.prompt for r in other if r.class_name == "zero"] != [r.prompt for r in zero]


def test_class_overrides_and_guidance_jitter(model_dir: Path) -> None:
    data = _templated(model_dir)
    data["sampling"] = {**data["sampling"], "guidance_jitter": [1.5, 3.5]}  # type: ignore[dict-item]
    recipe = recipe_from_dict(data)
    rows = plan(recipe)
    one = [r for r in rows if r.class_name == "one"]
    assert {r.negative_prompt for r in one} == {"smudged"}
    assert {r.sample_guidance_scale for r in one} == {4.5}  # a class's own: not jittered
    assert {r.sample_steps for r in one} == {3}
    assert {json.loads(r.prompt_slots or "")["style"] for r in one} == {"bold", "thin"}
    assert {json.loads(r.prompt_slots or "")["background"] for r in one} == {"on slate"}
    two = [r for r in rows if r.class_name == "two"]
    assert {r.negative_prompt for r in two} == {"blurry"}
    assert {r.sample_steps for r in two} == {2}
    assert {r.sample_guidance_scale for r in two} == {1.5, 2.0, 2.5, 3.0, 3.5}
    assert {r.prompt_slots for r in two} == {"{}"}


def test_recipe_hash_is_unchanged_by_unused_new_fields(model_dir: Path) -> None:
    plain = tiny_recipe_dict(model_dir)
    explicit = tiny_recipe_dict(model_dir, slots={}, adapters=[])
    explicit["classes"] = [dict(c, slots={}, adapters=[], steps=None) for c in plain["classes"]]
    assert recipe_from_dict(plain).hash == recipe_from_dict(explicit).hash
    changed = tiny_recipe_dict(model_dir)
    changed["classes"] = [dict(plain["classes"][0], steps=3), *plain["classes"][1:]]
    assert recipe_from_dict(changed).hash != recipe_from_dict(plain).hash


def test_a_slot_without_values_is_refused_naming_class_and_prompt(model_dir: Path) -> None:
    data = _templated(model_dir)
    data["classes"][2]["prompts"] = ["a digit {texture}"]  # type: ignore[index]
    with pytest.raises(RecipeError, match=r"class 'two', prompt 'a digit \{texture\}'.*texture"):
        recipe_from_dict(data)
    data = _templated(model_dir, slots={"class": ["x"]})
    with pytest.raises(RecipeError, match="slot 'class'"):
        recipe_from_dict(data)


def test_blocklist_applies_to_every_expansion(model_dir: Path) -> None:
    data = _templated(model_dir, safety={"blocklist": ["candlelight"]})
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(data)
    message = str(err.value)
    assert "class 'zero'" in message
    assert "a photo of a zero, on a desk, by candlelight" in message
    assert "'candlelight'" in message
    # a term spanning template text and a slot value is found too
    data = _templated(model_dir, safety={"blocklist": ["digit one on slate"]})
    with pytest.raises(RecipeError, match="class 'one'"):
        recipe_from_dict(data)
    # no blocked term: every expansion passes
    ok = recipe_from_dict(_templated(model_dir, safety={"blocklist": ["gore"]}))
    assert len(list(all_prompts(ok, ok.classes[0]))) == len(BACKGROUNDS) * len(LIGHTING)


def test_too_many_expansions_to_check_are_refused(model_dir: Path) -> None:
    many = [f"value {i}" for i in range(500)]
    data = _templated(
        model_dir, slots={"background": many, "lighting": many}, safety={"blocklist": ["gore"]}
    )
    with pytest.raises(RecipeError, match="too many to check"):
        recipe_from_dict(data)
    del data["safety"]
    recipe_from_dict(data)  # without a blocklist nothing needs enumerating


def test_plan_shows_expanded_prompts(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_recipe(tmp_path / "r.yaml", _templated(model_dir))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a photo of a zero, " in out
    assert "{" not in out  # every prompt shown expanded
    assert "(steps 3, guidance 4.5)" in out  # class one's own settings
