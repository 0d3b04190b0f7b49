"""The corpus expectations, pinned: for a fixed input, the suites `corpus_expectations`
validates (dataset, the table's columns, every expectation's configuration) hash to the value
recorded here, and the failure budget's result reads as recorded."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from synthgen.validators import expectations
from synthgen.validators.expectations import ExpectationResult, corpus_expectations
from tests.validators.report_fixture import sample_rows, score_columns

PINNED = "b25bf627c04ba997ca5902a19d1330dd988c7302886b52e40f601944e5c56ecd"


def _inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = sample_rows(np.random.default_rng(0))
    files = pd.DataFrame(
        {
            "file": ["00000.tar"],
            "manifest_sha256": ["a" * 64],
            "actual_sha256": ["a" * 64],
            "manifest_bytes": [10],
            "actual_bytes": [10],
        }
    )
    classes = pd.DataFrame(
        {
            "class_name": ["zero", "one"],
            "planned": [12, 12],
            "attempted": [12, 12],
            "accepted_or_untargeted": [-1, -1],
            "target_accepted": [-1, -1],
        }
    )
    return rows, files, classes


def _suites(monkeypatch: pytest.MonkeyPatch, **options: Any) -> tuple[list, list]:
    """What corpus_expectations hands to great_expectations, and what it returns."""
    seen: list[dict[str, Any]] = []

    def record(
        context: Any, name: str, df: pd.DataFrame, suite: list[Any], part: str = ""
    ) -> list[ExpectationResult]:
        seen.append(
            {
                "dataset": name,
                "part": part,
                "columns": [str(c) for c in df.columns],
                "rows": len(df),
                "expectations": [e.configuration.to_json_dict() for e in suite],
            }
        )
        return [ExpectationResult(name, e.expectation_type, {}, True, "") for e in suite]

    monkeypatch.setattr(expectations, "_validate", record)
    rows, files, classes = _inputs()
    results = corpus_expectations(
        rows,
        files,
        classes,
        width=8,
        height=8,
        score_columns=score_columns(),
        **options,
    )
    return seen, [r.as_dict() for r in results]


def test_corpus_expectations_are_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, results = _suites(
        monkeypatch,
        recipe_hash=["ab" * 32, "cd" * 32],
        min_accepted_fraction=0.4,
        max_failed_fraction=0.1,
    )
    text = json.dumps(seen, sort_keys=True, default=str)
    assert hashlib.sha256(text.encode()).hexdigest() == PINNED
    assert [s["dataset"] + s["part"] for s in seen] == [
        "samples",
        "samples_images",
        "classes",
        "files",
        "failures",
    ]
    assert results[-1]["detail"] == (
        "validation.max_failed_fraction 0.1: observed failed fraction 0.08333 "
        "(3 of 36 samples failed)"
    )
    vector = "clip_tiny_clip_embedding__length"
    assert vector in seen[1]["columns"] and seen[1]["rows"] == 33


def test_no_accepted_fraction_no_mostly_expectation(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, _ = _suites(monkeypatch, recipe_hash="ab" * 32, min_accepted_fraction=0.0)
    mostly = [e for e in seen[0]["expectations"] if "mostly" in e["kwargs"]]
    assert mostly == []
    hashes = [e for e in seen[0]["expectations"] if e["kwargs"].get("column") == "recipe_hash"]
    assert hashes[0]["kwargs"]["value_set"] == ["ab" * 32]
