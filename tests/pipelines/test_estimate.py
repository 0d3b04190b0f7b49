"""`synthgen plan --estimate`: a short calibration on this machine, priced over the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synthgen.generators import handler
from synthgen.generators.planning import plan
from synthgen.pipelines.estimate import calibrate, price
from synthgen.pipelines.resolve import resolve
from synthgen.schemas.recipe import load_recipe
from tests.conftest import run_cli, tiny_recipe_dict, write_recipe


def test_calibration_times_three_calls_and_prices_each_planned_call(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, base = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(model_dir)))
    resolved = resolve(recipe, base)
    calls: list[tuple[int, int]] = []
    real = handler.generate_batch

    def counted(pipe: Any, settings: Any, requests: Any) -> Any:
        calls.append((settings.steps, len(requests)))
        return real(pipe, settings, requests)

    monkeypatch.setattr(handler, "generate_batch", counted)
    c = calibrate(resolved)
    assert calls == [(1, 4), (1, 4), (3, 4)]  # warm-up, then 1 and 3 steps; compute_batch 4
    assert c.load_seconds > 0 and c.call_fixed_seconds >= 0 and c.step_seconds >= 0
    assert c.call_fixed_seconds + c.step_seconds > 0 and c.score_seconds_per_image > 0

    # 12 samples in shards of 5, 5, 2; batches of 4 by position: 4+1, 4+1, 2 -> 5 calls
    est = price(c, resolved, list(plan(recipe)))
    assert (est.calls, est.images) == (5, 12)
    assert est.generate_seconds == pytest.approx(5 * (c.call_fixed_seconds + 2 * c.step_seconds))
    assert est.total_seconds == pytest.approx(
        c.load_seconds + est.generate_seconds + 12 * c.score_seconds_per_image
    )

    # a class of its own steps cuts the batches it shares into calls per steps value
    data = tiny_recipe_dict(model_dir)
    data["classes"][0]["steps"] = 5
    other, _ = load_recipe(write_recipe(tmp_path / "s.yaml", data))
    est = price(c, resolve(other, base), list(plan(other)))
    assert est.calls > 5
    low, high = (est.calls * (c.call_fixed_seconds + s * c.step_seconds) for s in (2, 5))
    assert low < est.generate_seconds < high
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "s.yaml"]  # nothing written


def test_plan_estimate_on_the_command_line(recipe_file: Path) -> None:
    done = run_cli("plan", str(recipe_file), "--estimate", "--examples", "0")
    assert done.returncode == 0, done.stderr
    assert "12 samples in 3 shard(s)" in done.stdout
    assert "estimated time on cpu (one worker" in done.stdout
    assert "12 images in 5 call(s) of 4" in done.stdout
    assert sorted(p.name for p in recipe_file.parent.iterdir()) == ["recipe.yaml"]
    plain = run_cli("plan", str(recipe_file), "--examples", "0")
    assert "add --estimate" in plain.stdout and "loaded" not in plain.stderr
