from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from synthgen.generators.planning import plan, sample_key, sample_seed
from synthgen.schemas.recipe import load_recipe


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
        assert r.seed == sample_seed(recipe.seed, r.key)
        assert r.key == sample_key(recipe.name, r.class_name, r.index)
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
        "from generators.planning import plan; from schemas.recipe import load_recipe;"
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
