"""The generating stage plans each shard it is given from the shard id alone: the planner
is asked for that one shard, never for the whole round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from synthgen.generators import planning
from synthgen.pipelines import generate
from synthgen.pipelines.generate import GenerateShards, StageSpec
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.pipelines.staging import read_staged
from synthgen.schemas.manifest import PlanRound
from tests.validators.conftest import recipe_with

ASKED: list[int] = []  # the shards the planner was asked for (the runner is in-process)


def test_each_shard_is_planned_alone_once(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = recipe_with(model_dir, count_per_class=2)  # 6 samples, shards of 5: 0 and 1
    planned = planning.plan(recipe)
    resolved = resolve(recipe, model_dir)
    spec = StageSpec(
        recipe=recipe,
        plan_round=PlanRound(),
        settings=generation_settings(resolved),
        scorers=tuple(resolved.scorers),
        checks=(),
        out=str(tmp_path),
    )
    one_shard = planning.plan_shard

    def counting(recipe: Any, shard: int, *args: Any, **kwargs: Any) -> Any:
        ASKED.append(shard)
        return one_shard(recipe, shard, *args, **kwargs)

    def whole_round(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the whole round was planned")

    ASKED.clear()
    monkeypatch.setattr(generate, "plan_shard", counting)
    monkeypatch.setattr(planning, "iter_plan", whole_round)
    monkeypatch.setattr(planning, "plan", whole_round)
    with BeamTestPipeline() as p:
        _ = p | beam.Create([1, 0]) | beam.ParDo(GenerateShards(spec))
    assert sorted(ASKED) == [0, 1], "one plan_shard call per shard, for that shard"
    staged = {
        shard: sorted(s.request.key for s in read_staged(tmp_path, shard)) for shard in (0, 1)
    }
    expected = {shard: sorted(q.key for q in planned if q.shard == shard) for shard in (0, 1)}
    assert staged == expected and len(planned) == 6
