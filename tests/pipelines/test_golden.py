"""Builds stay byte-identical across refactors: image hashes of a small digits build, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import GOLDEN


def test_digits_build_matches_recorded_image_hashes(digits_build: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    rows = []
    for path in sorted(digits_build.glob("*.parquet")):
        rows += pq.read_table(path, columns=["key", "image_sha256", "status"]).to_pylist()
    got = {r["key"]: (r["image_sha256"], r["status"]) for r in rows}
    want = {k: (v["image_sha256"], v["status"]) for k, v in golden["samples"].items()}
    assert len(want) == 30 and got == want
