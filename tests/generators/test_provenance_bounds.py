"""Provenance numbers are bounded by the recipe schema's own limits (issue 18, regenerate)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from synthgen.generators.provenance_bounds import check_provenance_bounds
from synthgen.schemas.recipe import ModelSpec, SamplingSpec

GOOD: dict[str, Any] = {
    "steps": 20,
    "guidance_scale": 3.0,
    "width": 16,
    "height": 16,
    "compute_batch": 50,
    "seed": 2**63 - 1,
    "prompt": "a handwritten digit 3",
    "negative_prompt": "",
}


def _limit(model: type, field: str, kind: str) -> Any:
    return next(getattr(m, kind) for m in model.model_fields[field].metadata if hasattr(m, kind))


def test_values_a_build_can_write_pass() -> None:
    check_provenance_bounds(GOOD)
    check_provenance_bounds({**GOOD, "steps": np.int32(2), "guidance_scale": np.float64(0)})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("compute_batch", 200_000),
        ("compute_batch", 0),
        ("steps", _limit(SamplingSpec, "steps", "le") + 1),
        ("width", 10**6),
        ("height", -8),
        ("guidance_scale", float("nan")),
        ("guidance_scale", float("inf")),
        ("seed", 2**63),
        ("seed", -1),
    ],
)
def test_out_of_range_numbers_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"provenance {field}: .* outside the recipe's limits"):
        check_provenance_bounds({**GOOD, field: value})


@pytest.mark.parametrize(
    ("field", "value"), [("steps", True), ("steps", 2.5), ("width", "16"), ("seed", None)]
)
def test_wrong_types_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"provenance {field}: expected"):
        check_provenance_bounds({**GOOD, field: value})


def test_missing_field_and_bad_text_are_refused() -> None:
    with pytest.raises(ValueError, match="provenance compute_batch: missing"):
        check_provenance_bounds({k: v for k, v in GOOD.items() if k != "compute_batch"})
    with pytest.raises(ValueError, match=r"provenance prompt: not valid UTF-8 text"):
        check_provenance_bounds({**GOOD, "prompt": "bad \ud800"})
    with pytest.raises(ValueError, match=r"provenance negative_prompt: expected text"):
        check_provenance_bounds({**GOOD, "negative_prompt": None})


def test_limits_follow_the_schema() -> None:
    top = _limit(ModelSpec, "compute_batch", "le")
    check_provenance_bounds({**GOOD, "compute_batch": top})
    with pytest.raises(ValueError, match=rf"less than or equal to {top}"):
        check_provenance_bounds({**GOOD, "compute_batch": top + 1})


@pytest.mark.parametrize(
    ("timesteps", "steps", "message"),
    [
        (list(range(999, -1, -1)), 2, "1000 timesteps for 2 steps"),  # more calls than steps
        ([999, 999], 2, "outside the recipe's limits"),  # not strictly decreasing
        ([5000, 10], 2, "outside the recipe's limits"),  # beyond the training range
        (["a"], 1, "outside the recipe's limits"),
    ],
)
def test_recorded_timesteps_are_bounded_and_match_the_steps(
    timesteps: list[Any], steps: int, message: str
) -> None:
    options = json.dumps({"timesteps": timesteps})
    with pytest.raises(ValueError, match=rf"provenance timesteps: .*{message}|{message}"):
        check_provenance_bounds({**GOOD, "steps": steps, "generation_options": options})
    good = json.dumps({"timesteps": [999, 499]})
    check_provenance_bounds({**GOOD, "steps": 2, "generation_options": good})
