from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthgen.generators.planning import (
    count_planned,
    iter_plan,
    plan,
    plan_shard,
    sample_key,
    sample_seed,
    shard_ids,
)
from synthgen.schemas.recipe import (
    MAX_COUNT_PER_CLASS,
    MAX_PLANNED_SAMPLES,
    Recipe,
    load_recipe,
    recipe_from_dict,
)
from synthgen.schemas.records import GenerationRequest


def test_keys_seeds_and_shards(recipe_file: Path) -> None:
    recipe, _ = load_recipe(recipe_file)
    reqs = plan(recipe)
    assert len(reqs) == 12
    assert len({r.key for r in reqs}) == 12
    assert all(re.fullmatch(r"[a-z0-9_-]+", r.key) for r in reqs)
    # shards are consecutive slices of the interleaved order: classes mix within a shard
    assert [r.shard for r in reqs] == [0] * 5 + [1] * 5 + [2] * 2
    assert {r.class_name for r in reqs if r.shard == 0} == {"zero", "one", "two"}
    for r in reqs:
        # the documented derivation, computed here independently of the planner's helpers
        digest = hashlib.sha256(f"synthgen-seed:{recipe.seed}:{r.key}".encode()).digest()
        assert r.seed == int.from_bytes(digest[:8], "little") & (2**63 - 1)
        assert r.key == f"{recipe.name}-{r.class_name}-{r.index:06d}"
        assert r.prompt in recipe.class_by_id(r.class_label).prompts
        assert 0 <= r.seed < 2**63


def test_plan_is_pure_and_seed_depends_on_recipe_seed(recipe_file: Path) -> None:
    recipe, _ = load_recipe(recipe_file)
    assert plan(recipe) == plan(recipe)
    other, _ = load_recipe(recipe_file, ["seed=8"])
    assert [r.key for r in plan(other)] == [r.key for r in plan(recipe)]
    assert all(a.seed != b.seed for a, b in zip(plan(other), plan(recipe), strict=True))


def test_seeds_do_not_depend_on_pythonhashseed(recipe_file: Path) -> None:
    code = (
        "from synthgen.generators.planning import plan;"
        "from synthgen.schemas.recipe import load_recipe;"
        f"r, _ = load_recipe({str(recipe_file)!r});"
        "print([(q.key, q.seed, q.prompt) for q in plan(r)])"
    )
    outs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(
            subprocess.run(
                [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
            ).stdout
        )
    assert len(outs) == 1


# -- streaming planning (issue 18, defect 4) ------------------------------------------------


def _reference_plan(
    recipe: Recipe,
    counts: dict[int, int],
    start: dict[int, int] | None,
    shard_offset: int,
) -> list[GenerationRequest]:
    """The planner as it was before streaming (b71a8a0): the whole list, then slice."""
    start = start or {}
    order = []
    for index in range(min(start.values(), default=0), max(counts.values(), default=0)):
        for class_id in sorted(counts):
            if start.get(class_id, 0) <= index < counts[class_id]:
                order.append((class_id, index))
    out = []
    for position, (class_id, index) in enumerate(order):
        cls = next(c for c in recipe.classes if c.id == class_id)
        key = sample_key(recipe.name, cls.name, index)
        seed = sample_seed(recipe.seed, key)
        out.append(
            GenerationRequest(
                key=key,
                shard=shard_offset + position // recipe.output.shard_size,
                index=index,
                class_label=cls.id,
                class_name=cls.name,
                prompt=cls.prompts[seed % len(cls.prompts)],
                negative_prompt=recipe.sampling.negative_prompt,
                seed=seed,
                # resolved per sample since templates: here, no slots and no class settings
                prompt_template=cls.prompts[seed % len(cls.prompts)],
                prompt_slots="{}",
                sample_steps=recipe.sampling.steps,
                sample_guidance_scale=recipe.sampling.guidance_scale,
            )
        )
    return out


def _recipe(n_classes: int, shard_size: int, count: int = 3) -> Recipe:
    return recipe_from_dict(
        {
            "name": "p",
            "seed": 11,
            "model": {"path": "m"},
            "scoring": {"clip_model": "c"},
            # ids deliberately not 0..n-1 nor in listing order
            "classes": [
                {"id": 7 * (n_classes - i), "name": f"k{i}", "prompts": ["a", "b", "c"]}
                for i in range(n_classes)
            ],
            "count_per_class": count,
            "output": {"shard_size": shard_size},
        }
    )


@st.composite
def _plans(draw: st.DrawFn) -> tuple[Recipe, dict[int, int], dict[int, int] | None, int]:
    recipe = _recipe(draw(st.integers(1, 6)), draw(st.integers(1, 9)))
    ids = [c.id for c in recipe.classes]
    counted = draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
    counts = {c: draw(st.integers(0, 15)) for c in counted}
    start = draw(
        st.none() | st.dictionaries(st.sampled_from(ids), st.integers(0, 12), max_size=len(ids))
    )
    return recipe, counts, start, draw(st.integers(0, 4))


@settings(max_examples=300, deadline=None)
@given(_plans())
def test_streamed_plan_matches_the_old_full_plan(
    case: tuple[Recipe, dict[int, int], dict[int, int] | None, int],
) -> None:
    recipe, counts, start, offset = case
    expected = _reference_plan(recipe, counts, start, offset)
    assert plan(recipe, counts, start, offset) == expected
    assert list(iter_plan(recipe, counts, start=start, shard_offset=offset)) == expected
    assert count_planned(recipe, counts, start) == len(expected)
    shards = shard_ids(recipe, counts, start, offset)
    assert list(shards) == sorted({r.shard for r in expected})
    for shard in range(offset - 1, offset + len(shards) + 2):
        got = plan_shard(recipe, shard, counts, start, offset)
        assert got == [r for r in expected if r.shard == shard]


def test_plan_shard_needs_no_full_plan() -> None:
    # 10 classes x 10**8 = 10**9 samples: the old planner would build them all first
    recipe = _recipe(10, 1000, count=MAX_COUNT_PER_CLASS)
    assert count_planned(recipe) == 10 * MAX_COUNT_PER_CLASS
    shards = shard_ids(recipe)
    assert len(shards) == 10**6
    last = plan_shard(recipe, shards[-1])
    assert len(last) == 1000
    assert {r.index for r in last} == {MAX_COUNT_PER_CLASS - 1 - i for i in range(100)}
    middle = plan_shard(recipe, 123_456)
    assert middle[0].index == 123_456 * 100 and middle[0].class_label == 7
    first = next(iter_plan(recipe))
    assert first == plan_shard(recipe, 0)[0]


def test_planned_total_is_bounded_for_explicit_counts() -> None:
    recipe = _recipe(20, 1000)
    counts = {c.id: MAX_COUNT_PER_CLASS for c in recipe.classes}
    with pytest.raises(ValueError, match=rf"counts: .* over the maximum of {MAX_PLANNED_SAMPLES}"):
        count_planned(recipe, counts)
    with pytest.raises(ValueError, match="not among the recipe's classes"):
        plan(recipe, {99999: 3})


def test_ten_thousand_classes_plan_without_a_scan_per_lookup() -> None:
    import time

    recipe = _recipe(10_000, 1000, count=3)
    began = time.monotonic()
    requests = plan(recipe)
    assert len(requests) == 30_000
    assert plan_shard(recipe, 29) == requests[29_000:]
    assert time.monotonic() - began < 10  # was ~7 s for 30k requests, scanning per lookup


def test_padding_waste_names_each_step_that_pads(model_dir: Path) -> None:
    from synthgen.generators.planning import padding_waste
    from synthgen.schemas.recipe import recipe_from_dict
    from tests.conftest import tiny_recipe_dict

    data = tiny_recipe_dict(model_dir)  # shard_size 5, compute_batch 4, batch_size 4
    generation, scoring = padding_waste(recipe_from_dict(data, "r"))  # calls of 4 + 1, twice
    assert "38 % of each full shard's generation" in generation
    assert "38 % of the scorers' work" in scoring
    data["output"] = {"shard_size": 8}
    assert padding_waste(recipe_from_dict(data, "r")) == []
    data["scoring"] = {**data["scoring"], "batch_size": 64}  # the old default shape
    (note,) = padding_waste(recipe_from_dict(data, "r"))
    assert note.startswith("scoring.batch_size 64") and "94 %" in note  # 2 chunks of 4 in 128
