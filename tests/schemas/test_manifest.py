"""The typed on-disk contracts: strict JSON, round trips, and the published JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from synthgen.schemas.manifest import (
    BuildState,
    FileInfo,
    PlanRound,
    ShardStats,
    manifest_json_schema,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "manifest.schema.json"


def test_published_manifest_schema_is_current() -> None:
    current = json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA.read_text() == current, (
        "docs/manifest.schema.json is stale: regenerate it from schemas/manifest.py "
        "(python -c 'from synthgen.schemas.manifest import manifest_json_schema; ...')"
    )


def test_shard_stats_round_trip_and_refuse_unknown_fields() -> None:
    stats = ShardStats(
        shard=3,
        files={"00003.tar": FileInfo(sha256="a" * 64, bytes=10)},
        accepted=2,
        rejected=1,
        recipe_hash="h",
        keys=3,
    )
    assert ShardStats.model_validate_json(stats.to_json()) == stats
    data = json.loads(stats.to_json())
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        ShardStats.model_validate(data)
    with pytest.raises(ValidationError):
        FileInfo(sha256="not-a-hash", bytes=1)


def _strict(text: bytes) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_to_json_is_strict_json_with_non_finite_values_as_null() -> None:
    state = BuildState(recipe_hash="h", recipe={"x": float("inf")}, created_at="t")
    assert _strict(state.to_json())["recipe"] == {"x": None}  # type: ignore[index]


def test_plan_round_describes_a_fixed_build_by_default() -> None:
    assert PlanRound().plan_kwargs() == {"counts": None, "start": {}, "shard_offset": 0}
