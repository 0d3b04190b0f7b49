from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.pipelines.build import ValidationFailed, run_build
from synthgen.validators.corpus import validate_dir
from tests.conftest import SPLIT_THRESHOLD, tiny_recipe_dict, write_recipe


def _rehash_manifest(out: Path) -> None:
    """Rewrite manifest hashes to match whatever is on disk now (a forged manifest)."""
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        for name, info in entry["files"].items():
            data = (out / name).read_bytes()
            info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_validate_passes_a_fresh_build(corpus: Path) -> None:
    report = validate_dir(corpus)
    assert report.ok, (report.failures, report.failed_expectations())
    names = {e.expectation for e in report.expectations}
    assert {
        "expect_column_values_to_be_unique",
        "expect_column_pair_values_to_be_equal",
        "expect_column_values_to_not_be_null",
    } <= names


def test_validate_cli_fails_a_truncated_tar(corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    tar = bad / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:700])
    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "00001.tar" in proc.stdout and "INVALID" in proc.stdout
    # forging the manifest to match does not hide a tar that cannot be read
    _rehash_manifest(bad)
    report = validate_dir(bad)
    assert not report.ok
    assert any("00001.tar" in f for f in report.failures)


def test_validate_fails_a_duplicated_key_even_with_a_matching_manifest(
    corpus: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "dup"
    shutil.copytree(corpus, bad)
    # copy one accepted sample of shard 0 into shard 1: tar members and Parquet row
    rows0 = pq.read_table(bad / "00000.parquet").to_pylist()
    victim = next(r for r in rows0 if r["status"] == "accepted")
    with tarfile.open(bad / "00000.tar") as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.name.startswith(victim["key"])]
    with tarfile.open(bad / "00001.tar") as tf:
        existing = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(bad / "00001.tar", "w") as tf:
        for m, data in existing + members:
            tf.addfile(m, io.BytesIO(data))
    t1 = pq.read_table(bad / "00001.parquet")
    dup = dict(victim, shard=1)
    pq.write_table(
        pa.concat_tables([t1, pa.Table.from_pylist([dup], schema=t1.schema)]), bad / "00001.parquet"
    )
    _rehash_manifest(bad)
    report = validate_dir(bad)
    assert not report.ok
    failed = {e.expectation for e in report.failed_expectations()}
    assert "expect_column_values_to_be_unique" in failed


def test_validate_fails_without_manifest(corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "nomanifest"
    shutil.copytree(corpus, bad)
    (bad / "manifest.json").unlink()
    assert validate_dir(bad).failures == [f"{bad}: no manifest.json: not a complete build"]


def test_failed_expectation_fails_the_build(model_dir: Path, tmp_path: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}}
    data["validation"] = {"min_accepted_fraction": 0.95}
    recipe = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(ValidationFailed, match="build failed validation"):
        run_build(recipe, tmp_path / "out", show_progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed_validation"
    assert not manifest["validation"]["success"]
    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "validate", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1


def test_quantile_check_rejects_a_fixed_share_per_class(model_dir: Path, tmp_path: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {"clip_score": None, "label_margin": {"kept_fraction": 0.5}}
    run_build(write_recipe(tmp_path / "r.yaml", data), tmp_path / "out", show_progress=False)
    rows = pa.concat_tables(
        [pq.read_table(p) for p in sorted((tmp_path / "out").glob("*.parquet"))]
    )
    df = rows.to_pandas()
    per_class = df[df.status == "rejected"].groupby("class_name").size().to_dict()
    assert per_class == {"zero": 2, "one": 2, "two": 2}
    assert set(df.reject_reason.dropna()) == {"label_margin"}
