"""`synthgen plan --estimate`: a short calibration on this machine, priced over the plan —
per step where the sampler's step count is free, at the recipe's own steps for a few-step
model — with device-seconds and a price per 1,000 images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from synthgen.generators import handler
from synthgen.generators.planning import plan
from synthgen.pipelines.estimate import (
    PER_STEP,
    RECIPE_STEPS,
    calibrate,
    expected_acceptance,
    plan_estimate,
    price,
)
from synthgen.pipelines.resolve import resolve
from synthgen.schemas.recipe import load_recipe
from tests.conftest import run_cli, run_main, tiny_recipe_dict, write_recipe
from tests.generators.families import make_snapshot
from tests.generators.test_families import _recipe

Call = tuple[int, int, Any]  # (steps, requests, explicit timesteps) of one timed call


@pytest.fixture
def timed_calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every model call the calibration makes: its steps, its batch and its timesteps."""
    calls: list[Call] = []
    real = handler.generate_batch

    def counted(pipe: Any, settings: Any, requests: Any) -> Any:
        calls.append((settings.steps, len(requests), settings.timesteps))
        return real(pipe, settings, requests)

    monkeypatch.setattr(handler, "generate_batch", counted)
    return calls


@pytest.fixture(scope="module")
def few_step_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fewstep")
    for family in ("lcm", "sana-sprint"):
        make_snapshot(family, root / family, root / "UNPICKLED")
    return root


def _tiny(tmp_path: Path, model_dir: Path, name: str, **sampling: Any) -> tuple[Any, Path]:
    data = tiny_recipe_dict(model_dir)
    data["sampling"] = {**data["sampling"], **sampling}
    return load_recipe(write_recipe(tmp_path / name, data))


def test_many_steps_are_calibrated_per_step_and_each_call_priced_at_its_steps(
    model_dir: Path, tmp_path: Path, timed_calls: list[Call]
) -> None:
    recipe, base = _tiny(tmp_path, model_dir, "r.yaml", steps=10)
    resolved = resolve(recipe, base)
    c = calibrate(resolved)
    assert timed_calls == [(1, 4, None), (1, 4, None), (3, 4, None)]  # warm-up, 1, 3 steps
    assert c.method == PER_STEP and sorted(c.call_seconds) == [1, 3]
    assert c.call_fixed_seconds is not None and c.step_seconds is not None
    assert c.load_seconds > 0 and c.call_fixed_seconds >= 0 and c.step_seconds >= 0
    assert c.call_fixed_seconds + c.step_seconds > 0 and c.score_seconds_per_image > 0
    assert "method: per step (calls of 1 and 3 steps)" in c.method_line()

    # 12 samples in shards of 5, 5, 2; batches of 4 by position: 4+1, 4+1, 2 -> 5 calls
    est = price(c, resolved, list(plan(recipe)))
    assert (est.calls, est.images) == (5, 12)
    per_call = c.call_fixed_seconds + 10 * c.step_seconds
    assert est.generate_seconds == pytest.approx(5 * per_call)
    assert est.total_seconds == pytest.approx(
        c.load_seconds + est.generate_seconds + 12 * c.score_seconds_per_image
    )

    # a class of its own steps cuts the batches it shares into calls per steps value
    data = tiny_recipe_dict(model_dir)
    data["sampling"]["steps"] = 10
    data["classes"][0]["steps"] = 20
    other, _ = load_recipe(write_recipe(tmp_path / "s.yaml", data))
    est = price(c, resolve(other, base), list(plan(other)))
    assert est.calls > 5
    low, high = (est.calls * (c.call_fixed_seconds + s * c.step_seconds) for s in (10, 20))
    assert low < est.generate_seconds < high
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "s.yaml"]  # nothing written


def test_a_one_step_recipe_is_timed_at_one_step_and_never_scaled(
    model_dir: Path, tmp_path: Path, timed_calls: list[Call]
) -> None:
    recipe, base = _tiny(tmp_path, model_dir, "r.yaml", steps=1)
    resolved = resolve(recipe, base)
    c = calibrate(resolved)
    assert timed_calls == [(1, 4, None), (1, 4, None)]  # warm-up, then the recipe's 1 step
    assert c.method == RECIPE_STEPS and sorted(c.call_seconds) == [1]
    assert c.call_fixed_seconds is None and c.step_seconds is None  # no per-step figure
    assert "the recipe's own steps timed directly, no per-step figure scaled" in c.method_line()
    est = price(c, resolved, list(plan(recipe)))
    assert est.generate_seconds == pytest.approx(est.calls * c.call_seconds[1])
    with pytest.raises(ValueError, match="no calibrated call of 4 steps"):
        c.call_cost(4)


@pytest.mark.parametrize(
    ("model", "sampling", "steps", "timesteps", "reason"),
    [
        (
            "sana-sprint",
            {"scheduler": "scm", "steps": 2, "guidance_scale": 4.5},
            2,
            None,
            "SanaSprintPipeline is a few-step model (1-4 steps)",
        ),
        (
            "lcm",
            {"scheduler": "lcm", "steps": 2, "timesteps": [999, 499], "guidance_scale": 8.0},
            2,
            (999, 499),
            "sampling.timesteps fix the call at 2 step(s)",
        ),
        ("sd", {"scheduler": "lcm", "steps": 6}, 6, None, "LCMScheduler is a few-step sampler"),
    ],
)
def test_a_few_step_model_is_timed_at_the_recipes_own_steps(
    model: str,
    sampling: dict[str, Any],
    steps: int,
    timesteps: Any,
    reason: str,
    few_step_models: Path,
    model_dir: Path,
    tmp_path: Path,
    timed_calls: list[Call],
) -> None:
    folder = model_dir / "sd" if model == "sd" else few_step_models / model
    recipe, base = load_recipe(_recipe(tmp_path, model_dir, folder, **sampling))
    resolved = resolve(recipe, base)
    c = calibrate(resolved)
    assert timed_calls == [(steps, 2, timesteps)] * 2  # warm-up, then the recipe's steps
    assert (c.method, c.reason, sorted(c.call_seconds)) == (RECIPE_STEPS, reason, [steps])
    est = price(c, resolved, list(plan(recipe)))
    assert est.generate_seconds == pytest.approx(est.calls * c.call_seconds[steps])


def test_device_seconds_and_price_per_thousand(
    model_dir: Path, tmp_path: Path, timed_calls: list[Call]
) -> None:
    recipe, base = _tiny(tmp_path, model_dir, "r.yaml", steps=1)
    resolved = resolve(recipe, base)
    est = price(calibrate(resolved), resolved, list(plan(recipe)), price_per_hour=2.5)
    f = est.figures()
    per_1k = est.generate_seconds / 12 * 1000  # model calls only, per generated image
    assert f["device_seconds_per_1k_generated"] == pytest.approx(per_1k)
    assert f["price_per_1k_generated"] == pytest.approx(per_1k / 3600 * 2.5)
    # the tiny recipe's checks can reject: acceptance is unknown, figures per 1,000 generated
    assert f["acceptance_rate"] is None and f["device_seconds_per_1k_accepted"] is None
    assert "clip_score" in f["acceptance_basis"] and f["price_per_1k_accepted"] is None
    assert any("device-s per 1,000 generated images" in line for line in est.lines())

    # the validation floor bounds the figure per 1,000 accepted
    data = tiny_recipe_dict(model_dir)
    data["validation"] = {"min_accepted_fraction": 0.5}
    floor, _ = load_recipe(write_recipe(tmp_path / "floor.yaml", data))
    bounded = dataclasses.replace(est, acceptance=expected_acceptance(resolve(floor, base)))
    g = bounded.figures()
    assert g["acceptance_rate"] == 0.5 and g["acceptance_at_most"] is True
    assert g["device_seconds_per_1k_accepted"] == pytest.approx(2 * per_1k)
    assert g["price_per_1k_accepted"] == pytest.approx(2 * per_1k / 3600 * 2.5)
    assert any("at most" in line and "per 1,000 accepted" in line for line in bounded.lines())


def test_a_balancing_build_is_priced_per_synthetic_image(
    model_dir: Path, tmp_path: Path, timed_calls: list[Call]
) -> None:
    from tests.pipelines.test_balance import _balance_recipe, make_folder

    source = make_folder(tmp_path / "source")
    recipe, base = load_recipe(_balance_recipe(tmp_path, model_dir, str(source)))
    lines, f = plan_estimate(recipe, base, price_per_hour=1.8)
    assert timed_calls == [(2, 4, None), (2, 4, None)]  # a batch of each class, at 2 steps
    assert f["method"] == RECIPE_STEPS and "per synthetic image" in lines[0]
    per_1k = f["call_seconds_by_steps"]["2"] / 4 * 1000
    assert f["device_seconds_per_1k_generated"] == pytest.approx(per_1k)
    assert f["price_per_1k_generated"] == pytest.approx(per_1k / 3600 * 1.8)
    assert any(line.startswith("  price at 1.8 per device-hour") for line in lines)


def test_a_negative_or_lone_price_is_refused_by_name(recipe_file: Path) -> None:
    done = run_cli("plan", str(recipe_file), "--estimate", "--price-per-hour", "-1")
    assert done.returncode != 0
    assert "--price-per-hour: must be a number of at least 0, got -1.0" in done.stderr
    assert "loaded" not in done.stderr and "estimated" not in done.stdout
    alone = run_cli("plan", str(recipe_file), "--price-per-hour", "2")
    assert alone.returncode != 0 and "--price-per-hour: prices the calibration" in alone.stderr


def test_plan_estimate_on_the_command_line(recipe_file: Path) -> None:
    done = run_cli("plan", str(recipe_file), "--estimate", "--examples", "0")
    assert done.returncode == 0, done.stderr
    assert "12 samples in 3 shard(s)" in done.stdout
    assert "estimated time on cpu (one worker" in done.stdout
    assert "12 images in 5 call(s) of 4" in done.stdout
    assert "method: the recipe's own steps timed directly" in done.stdout
    assert "device-s per 1,000 generated images" in done.stdout
    assert sorted(p.name for p in recipe_file.parent.iterdir()) == ["recipe.yaml"]
    plain = run_cli("plan", str(recipe_file), "--examples", "0")
    assert "add --estimate" in plain.stdout and "loaded" not in plain.stderr


def test_plan_estimate_json_carries_the_figures(
    recipe_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (the command line's own run is the test above)."""
    args = ("plan", str(recipe_file), "--estimate", "--json", "--price-per-hour", "3.6")
    code, stdout, stderr = run_main(capsys, *args)
    assert code == 0, stderr
    out = json.loads(stdout)
    f = out["estimate_figures"]
    assert (f["method"], f["calls"], f["images"], f["price_per_hour"]) == (RECIPE_STEPS, 5, 12, 3.6)
    assert f["device_seconds_per_1k_generated"] == pytest.approx(f["generate_seconds"] / 12e-3)
    assert f["price_per_1k_generated"] == pytest.approx(f["device_seconds_per_1k_generated"] / 1e3)
    assert any("price at 3.6 per device-hour" in line for line in out["estimate"])
