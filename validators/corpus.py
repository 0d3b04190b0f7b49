"""Corpus-level validation of an output directory: hashes, tars, Parquet, expectations."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    BalanceInfo,
    Manifest,
    ShardEntry,
    ValidationInfo,
    shard_files,
)
from synthgen.schemas.recipe import Recipe, RecipeError, recipe_from_dict
from synthgen.schemas.records import sample_schema
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.hashing import file_sha256
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators.expectations import (
    ExpectationResult,
    corpus_expectations,
    metric_gate_results,
)

IMAGE_EXTS = ("png", "webp", "jpg")


@dataclass
class CorpusReport:
    failures: list[str] = field(default_factory=list)
    expectations: list[ExpectationResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(e.success for e in self.expectations)

    def failed_expectations(self) -> list[ExpectationResult]:
        return [e for e in self.expectations if not e.success]

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.ok,
            "failures": self.failures,
            "expectations": [e.as_dict() for e in self.expectations],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusReport:
        """The report `as_dict` wrote (`success` follows from the rest)."""
        return cls(
            failures=[str(f) for f in data["failures"]],
            expectations=[ExpectationResult(**e) for e in data["expectations"]],
        )

    def as_info(self) -> ValidationInfo:
        """The manifest's `validation` block."""
        return ValidationInfo(
            success=self.ok,
            failures=list(self.failures),
            expectations=[e.as_info() for e in self.expectations],
        )


def read_rows(
    out: Path,
    shards: Iterable[int],
    with_images: bool = False,
    score_columns: Sequence[ScoreColumn] = (),
) -> pd.DataFrame:
    tables = []
    for shard in shards:
        path = out / shard_files(shard)[1]
        table = pq.read_table(path)
        if not with_images and "rejected_image" in table.column_names:
            table = table.drop_columns(["rejected_image"])
        tables.append(table)
    if not tables:
        return empty_rows(score_columns)
    return pa.concat_tables(tables).to_pandas()


def empty_rows(score_columns: Sequence[ScoreColumn] = ()) -> pd.DataFrame:
    """The rows of a build with no shards (a balance source already at target): no rows, but
    every column, so per-status and per-class views need no special case."""
    return sample_schema(score_columns).empty_table().to_pandas()


def file_table(out: Path, entries: Sequence[ShardEntry]) -> pd.DataFrame:
    rows = []
    for entry in entries:
        for name, info in entry.files.items():
            path = out / name
            exists = path.is_file()
            rows.append(
                {
                    "file": name,
                    "manifest_sha256": info.sha256,
                    "manifest_bytes": info.bytes,
                    "actual_sha256": file_sha256(path) if exists else None,
                    "actual_bytes": path.stat().st_size if exists else -1,
                }
            )
    columns = ["file", "manifest_sha256", "manifest_bytes", "actual_sha256", "actual_bytes"]
    return pd.DataFrame(rows, columns=columns)


def class_table(
    rows: pd.DataFrame, planned: dict[str, int], targets: dict[str, int] | None = None
) -> pd.DataFrame:
    targets = targets or {}
    out = []
    for name, n in sorted(planned.items()):
        mine = rows[rows["class_name"] == name] if len(rows) else rows
        accepted = int((mine["status"] == "accepted").sum()) if len(mine) else 0
        target = targets.get(name, -1)
        out.append(
            {
                "class_name": name,
                "planned": n,
                "attempted": len(mine),
                "accepted": accepted,
                "target_accepted": target,
                "accepted_or_untargeted": accepted if target >= 0 else -1,
            }
        )
    columns = ["class_name", "planned", "attempted", "accepted", "target_accepted"]
    return pd.DataFrame(out, columns=[*columns, "accepted_or_untargeted"])


def check_tar(out: Path, shard: int, rows: pd.DataFrame) -> list[str]:
    """Readable, contiguous samples with every member; agrees with the shard's Parquet rows."""
    from PIL import Image

    tar_name = shard_files(shard)[0]
    failures: list[str] = []
    members: dict[str, dict[str, bytes]] = {}
    try:
        for sample in iter_tar_samples(out / tar_name):
            if sample.key in members:
                failures.append(f"{tar_name}: key {sample.key} is not contiguous or repeats")
            failures += [f"{tar_name}: duplicate member {sample.key}.{e}" for e in sample.repeated]
            members.setdefault(sample.key, {}).update(sample.members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return [f"{tar_name}: unreadable tar: {exc}"]
    shard_rows = rows[rows["shard"] == shard] if len(rows) else rows
    accepted = shard_rows[shard_rows["status"] == "accepted"] if len(shard_rows) else shard_rows
    by_key = {r["key"]: r for r in accepted.to_dict("records")}
    if set(members) != set(by_key):
        extra = sorted(set(members) - set(by_key))[:3]
        missing = sorted(set(by_key) - set(members))[:3]
        failures.append(
            f"{tar_name}: tar keys differ from accepted Parquet rows "
            f"(only in tar: {extra}, only in Parquet: {missing})"
        )
    for key, parts in members.items():
        image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
        if image_ext is None or not {"json", "txt", "cls"} <= set(parts):
            failures.append(f"{tar_name}: sample {key} lacks members (has {sorted(parts)})")
            continue
        try:
            Image.open(io.BytesIO(parts[image_ext])).load()
        except Exception as exc:
            failures.append(f"{tar_name}: {key}.{image_ext} does not decode: {exc}")
        try:
            prov = json.loads(parts["json"])
        except ValueError:
            failures.append(f"{tar_name}: {key}.json is not JSON")
            continue
        if prov.get("key") != key:
            failures.append(f"{tar_name}: {key}.json names key {prov.get('key')!r}")
        row = by_key.get(key)
        if row is not None:
            if hashlib.sha256(parts[image_ext]).hexdigest() != row["image_sha256"]:
                failures.append(f"{tar_name}: {key} image differs from its Parquet sha256")
            if parts["cls"].decode("ascii", "replace") != str(row["class_label"]):
                failures.append(f"{tar_name}: {key}.cls differs from its Parquet class_label")
    return failures


def validate_corpus(
    out: Path, manifest: Manifest, recipe: Recipe | None = None, tars: bool = True
) -> CorpusReport:
    """Check the shard files a manifest lists: presence, Parquet, tars, expectations.

    Used as the build's gate (with the manifest about to be written; `tars=False` since the
    writer just produced them) and by `validate_dir`. `recipe` defaults to the manifest's.
    """
    recipe = recipe or recipe_from_dict(manifest.recipe, MANIFEST_NAME)
    report = CorpusReport()
    shards = manifest.shard_ids
    for shard in shards:
        for name in shard_files(shard):
            if not (out / name).is_file():
                report.failures.append(f"{name}: missing")
    if report.failures:
        return report
    try:
        rows = read_rows(out, shards, score_columns=manifest.score_columns)
    except (OSError, pa.ArrowException) as exc:
        report.failures.append(f"unreadable Parquet: {exc}")
        return report
    if tars:
        for shard in shards:
            report.failures += check_tar(out, shard, rows)
    counts = manifest.counts
    report.expectations = corpus_expectations(
        rows,
        file_table(out, manifest.shards),
        class_table(rows, counts.planned_per_class, counts.target_accepted_per_class),
        recipe_hash=manifest.recipe_hashes if manifest.lineage else recipe.hash,
        width=recipe.sampling.width,
        height=recipe.sampling.height,
        score_columns=manifest.score_columns,
        min_accepted_fraction=recipe.validation.min_accepted_fraction,
        max_failed_fraction=recipe.validation.max_failed_fraction,
    )
    return report


def gate_corpus(
    out: Path, manifest: Manifest, recipe: Recipe | None = None, *, tars: bool = False
) -> CorpusReport:
    """The build's gate: `validate_corpus` and the recipe's `validation.metrics` gates on the
    manifest's metrics block, with the manifest about to be written."""
    recipe = recipe or recipe_from_dict(manifest.recipe, MANIFEST_NAME)
    report = validate_corpus(out, manifest, recipe, tars=tars)
    report.expectations += metric_gate_results(manifest, recipe)
    return report


def check_balanced_index(out: Path, balance: BalanceInfo) -> list[str]:
    """balanced.parquet reads with pyarrow and pandas and holds exactly the target per class."""
    name = balance.balanced_index
    try:
        table = pq.read_table(out / name)
        df = pd.read_parquet(out / name)
    except Exception as exc:
        return [f"{name}: unreadable: {exc}"]
    failures = []
    if table.num_rows != len(df):
        failures.append(f"{name}: pyarrow and pandas disagree on the row count")
    counts = df.groupby("class_name").size().to_dict()
    for cls, target in balance.after.items():
        if counts.get(cls, 0) != target:
            failures.append(f"{name}: class {cls} has {counts.get(cls, 0)} rows, expected {target}")
    synthetic = set(df.loc[df["source"] == "synthetic", "key"])
    if len(synthetic) != int((df["source"] == "synthetic").sum()):
        failures.append(f"{name}: a synthetic key repeats")
    return failures


def read_manifest(out: Path) -> Manifest:
    """The typed manifest of a build directory (ValueError / OSError when unreadable)."""
    return Manifest.model_validate_json((out / MANIFEST_NAME).read_bytes())


def validate_dir(out: Path) -> CorpusReport:
    """`synthgen validate DIR`: every check, trusting nothing but the manifest's recipe."""
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file():
        return CorpusReport(failures=[f"{out}: no {MANIFEST_NAME}: not a complete build"])
    try:
        manifest = read_manifest(out)
        recipe = recipe_from_dict(manifest.recipe, str(manifest_path))
    except (ValueError, OSError, ValidationError, RecipeError) as exc:
        return CorpusReport(failures=[f"{manifest_path}: malformed manifest: {exc}"])
    report = validate_corpus(out, manifest, recipe)
    for name, info in manifest.files.items():
        path = out / name
        if not path.is_file():
            report.failures.append(f"{name}: missing")
        elif file_sha256(path) != info.sha256 or path.stat().st_size != info.bytes:
            report.failures.append(f"{name}: sha256 or size differs from the manifest")
    if manifest.balance is not None:
        report.failures += check_balanced_index(out, manifest.balance)
    listed = {name for e in manifest.shards for name in e.files} | set(manifest.files)
    for p in sorted(out.glob("*.tar")) + sorted(out.glob("*.parquet")):
        if p.name not in listed:
            report.failures.append(f"{p.name}: shard file not listed in the manifest")
    if manifest.status != "complete":
        report.failures.append(f"manifest status is {manifest.status!r}")
    return report
