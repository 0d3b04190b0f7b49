"""Builds stay byte-identical across refactors: image hashes of a small digits build, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import GOLDEN


def recorded_hashes() -> list[dict[str, tuple[str, str]]]:
    """The recorded (sha256, status) of every key: the main record, then the record as each
    machine variant (a CPU whose kernels round a few images differently) changes it."""
    golden = json.loads(GOLDEN.read_text())
    want = {k: (v["image_sha256"], v["status"]) for k, v in golden["samples"].items()}
    variants = [want]
    for name, changed in golden.get("machine_variants", {}).items():
        if not name.startswith("_"):
            variants.append(want | {k: (sha, want[k][1]) for k, sha in changed.items()})
    return variants


def test_digits_build_matches_recorded_image_hashes(digits_build: Path) -> None:
    rows = []
    for path in sorted(digits_build.glob("*.parquet")):
        rows += pq.read_table(path, columns=["key", "image_sha256", "status"]).to_pylist()
    got = {r["key"]: (r["image_sha256"], r["status"]) for r in rows}
    variants = recorded_hashes()
    assert all(len(v) == 30 for v in variants)
    assert got in variants, {k: got.get(k) for k in variants[0] if got.get(k) != variants[0][k]}
