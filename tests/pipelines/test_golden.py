"""Builds stay byte-identical across refactors: image hashes of a small digits build, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from synthgen.pipelines.build import run_build

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "digits_golden.json"


def test_digits_build_matches_recorded_image_hashes(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    result = run_build(
        ROOT / golden["recipe"],
        tmp_path / "out",
        overrides=golden["overrides"],
        show_progress=False,
    )
    rows = []
    for path in sorted(result.output.glob("*.parquet")):
        rows += pq.read_table(path, columns=["key", "image_sha256", "status"]).to_pylist()
    got = {r["key"]: (r["image_sha256"], r["status"]) for r in rows}
    want = {k: (v["image_sha256"], v["status"]) for k, v in golden["samples"].items()}
    assert got == want
