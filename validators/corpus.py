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
    ShardStats,
    ValidationInfo,
    shard_files,
    stats_name,
)
from synthgen.schemas.recipe import Recipe, RecipeError, recipe_from_dict
from synthgen.schemas.records import ACCEPTED, FAILED, REJECTED, sample_schema
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.codecs import codec_for_extension, readable_extensions
from synthgen.storage.hashing import file_sha256
from synthgen.storage.tars import iter_tar_samples, sample_member_limit
from synthgen.validators.expectations import (
    ExpectationResult,
    corpus_expectations,
    metric_gate_results,
)

COUNTED = (ACCEPTED, REJECTED, FAILED)  # the manifest's per-shard and total counts, by status


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
        path = out / shard_files(shard).parquet
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


class TooManyPixels(ValueError):
    """An image header declares more pixels than the bound; nothing was decoded."""


def open_bounded(data: bytes, size: tuple[int, int] | None) -> Any:
    """The image in `data`, decoded only when its header declares no more pixels than `size`
    (width, height: a build's own size; None: Pillow's bomb limit only). A small file that
    declares a huge image is refused before any pixel is read. Raises ValueError naming both
    sizes (TooManyPixels), or what Pillow raises on bytes that do not decode."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))  # reads the header only
    if size is not None and image.size[0] * image.size[1] > size[0] * size[1]:
        w, h = image.size
        raise TooManyPixels(
            f"{w}x{h}: more pixels than the build's {size[0]}x{size[1]}: not decoded"
        )
    image.load()
    return image


def _decode_bounded(
    extension: str, data: bytes, size: tuple[int, int] | None, frames: int | None
) -> Any:
    """A member's media decoded within the build's bounds: an image by `open_bounded`, a clip
    by its codec (no more than `frames` frames of `size`)."""
    codec = codec_for_extension(extension)
    if codec.kind != "video":
        return open_bounded(data, size)
    from synthgen.schemas.media import Shape

    limit = None if size is None else Shape(frames or 1, size[1], size[0])
    return codec().decode(data, limit)  # type: ignore[call-arg]


def check_tar(
    out: Path,
    shard: int,
    rows: pd.DataFrame,
    width: int | None = None,
    height: int | None = None,
    frames: int | None = None,
) -> list[str]:
    """Readable, contiguous samples with every member; agrees with the shard's Parquet rows.

    Samples are checked as the tar is walked, one at a time. With the build's image size (and
    a video build's `frames`), a member over `sample_member_limit` is not read and an image
    declaring more pixels than the build's (a clip: more frames or larger ones) is not
    decoded (either is a failure)."""
    tar_name = shard_files(shard).tar
    failures: list[str] = []
    shard_rows = rows[rows["shard"] == shard] if len(rows) else rows
    accepted = shard_rows[shard_rows["status"] == "accepted"] if len(shard_rows) else shard_rows
    by_key = {r["key"]: r for r in accepted.to_dict("records")}
    size = (width, height) if width and height else None
    limit = sample_member_limit(*size, frames or 1) if size else None
    seen: set[str] = set()
    try:
        for sample in iter_tar_samples(out / tar_name, max_member_bytes=limit, compressed=False):
            failures += [f"{tar_name}: duplicate member {sample.key}.{e}" for e in sample.repeated]
            if sample.key in seen:
                failures.append(f"{tar_name}: key {sample.key} is not contiguous or repeats")
                continue
            seen.add(sample.key)
            failures += _check_sample(tar_name, sample.key, sample.members, by_key, size, frames)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return [f"{tar_name}: unreadable tar: {exc}"]
    if seen != set(by_key):
        extra = sorted(seen - set(by_key))[:3]
        missing = sorted(set(by_key) - seen)[:3]
        failures.append(
            f"{tar_name}: tar keys differ from accepted Parquet rows "
            f"(only in tar: {extra}, only in Parquet: {missing})"
        )
    return failures


def _check_sample(
    tar_name: str,
    key: str,
    parts: dict[str, bytes],
    by_key: dict[str, dict[str, Any]],
    size: tuple[int, int] | None,
    frames: int | None = None,
) -> list[str]:
    """One tar sample: every member there, the image (or clip) decodes (within `size`, and
    `frames`), its JSON names it, and it agrees with its accepted Parquet row."""
    image_ext = next((e for e in readable_extensions() if e in parts), None)
    if image_ext is None or not {"json", "txt", "cls"} <= set(parts):
        return [f"{tar_name}: sample {key} lacks members (has {sorted(parts)})"]
    failures = []
    try:
        _decode_bounded(image_ext, parts[image_ext], size, frames)
    except Exception as exc:
        failures.append(f"{tar_name}: {key}.{image_ext} does not decode: {exc}")
    try:
        prov = json.loads(parts["json"])
    except ValueError:
        return [*failures, f"{tar_name}: {key}.json is not JSON"]
    if prov.get("key") != key:
        failures.append(f"{tar_name}: {key}.json names key {prov.get('key')!r}")
    row = by_key.get(key)
    if row is not None:
        if hashlib.sha256(parts[image_ext]).hexdigest() != row["image_sha256"]:
            failures.append(f"{tar_name}: {key} image differs from its Parquet sha256")
        if parts["cls"].decode("ascii", "replace") != str(row["class_label"]):
            failures.append(f"{tar_name}: {key}.cls differs from its Parquet class_label")
    return failures


def count_failures(
    manifest: Manifest, counted: dict[int, dict[str, int]], what: str = "the data holds"
) -> list[str]:
    """The manifest's counts against `counted` (shard -> status -> rows, recounted from the
    data): every shard entry and every total of `counts`; each mismatch named by its field."""
    failures = []
    listed = set(manifest.shard_ids)
    unlisted = sorted(set(counted) - listed)
    if unlisted:
        failures.append(f"rows of shard(s) {unlisted}, which the manifest does not list")
    totals = dict.fromkeys(COUNTED, 0)
    for entry in manifest.shards:
        mine = counted.get(entry.shard, {})
        for status in COUNTED:
            said, found = getattr(entry, status), mine.get(status, 0)
            totals[status] += found
            if said != found:
                failures.append(
                    f"shard {entry.shard}: {status}: the manifest says {said}, {what} {found}"
                )
    counts = manifest.counts
    found_total = {**totals, "attempted": sum(totals.values())}
    for name, found in found_total.items():
        said = getattr(counts, name)
        if said != found:
            failures.append(f"counts.{name}: the manifest says {said}, {what} {found}")
    per_class = sum(counts.planned_per_class.values())
    if counts.planned != per_class:
        failures.append(
            f"counts.planned: the manifest says {counts.planned}, "
            f"counts.planned_per_class sums to {per_class}"
        )
    return failures


def _counted_rows(rows: pd.DataFrame) -> dict[int, dict[str, int]]:
    if not len(rows):
        return {}
    grouped = rows.groupby(["shard", "status"]).size()
    out: dict[int, dict[str, int]] = {}
    for (shard, status), n in grouped.items():  # type: ignore[misc]
        out.setdefault(int(shard), {})[str(status)] = int(n)
    return out


def recount(out: Path, manifest: Manifest) -> list[str]:
    """The manifest's counts recounted from the data, without decoding anything: each shard's
    Parquet status column, and the samples in its tar (member names only) against its
    accepted count. For `synthgen.load(verify=True)`; `validate_corpus` checks more."""
    counted: dict[int, dict[str, int]] = {}
    failures = []
    for entry in manifest.shards:
        files = shard_files(entry.shard)
        try:
            table = pq.read_table(out / files.parquet, columns=["shard", "status"])
            tar_keys = {s.key for s in iter_tar_samples(out / files.tar, (), compressed=False)}
        except (OSError, EOFError, tarfile.TarError, pa.ArrowException) as exc:
            failures.append(f"shard {entry.shard}: unreadable: {exc}")
            continue
        for shard, status in zip(
            table.column("shard").to_pylist(), table.column("status").to_pylist(), strict=True
        ):
            mine = counted.setdefault(int(shard), {})
            mine[str(status)] = mine.get(str(status), 0) + 1
        if len(tar_keys) != entry.accepted:
            failures.append(
                f"shard {entry.shard}: accepted: the manifest says {entry.accepted}, "
                f"its tar holds {len(tar_keys)} samples"
            )
    return failures + count_failures(manifest, counted)


def check_stats(out: Path, manifest: Manifest) -> list[str]:
    """Each shard's `_stats.json` beside the build (what `--resume` and `--extend` read)
    counts what its manifest entry counts (the manifest's counts are checked against the
    data). A build copied without them (a pull) has none to check."""
    failures = []
    for entry in manifest.shards:
        path = out / stats_name(entry.shard)
        if not path.is_file():
            continue
        try:
            stats = ShardStats.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError, OSError) as exc:
            failures.append(f"{path.name}: unreadable shard stats: {exc}")
            continue
        differ = [k for k in ("shard", *COUNTED) if getattr(stats, k) != getattr(entry, k)]
        if differ:
            failures.append(
                f"{path.name}: "
                + ", ".join(
                    f"{k} {getattr(stats, k)}, the manifest says {getattr(entry, k)}"
                    for k in differ
                )
            )
    return failures


def validate_corpus(
    out: Path, manifest: Manifest, recipe: Recipe | None = None, tars: bool = True
) -> CorpusReport:
    """Check the shard files a manifest lists: presence, Parquet, tars, expectations, and
    every count the manifest states against the rows' status column.

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
    report.failures += count_failures(manifest, _counted_rows(rows))
    if tars:
        w, h = recipe.sampling.width, recipe.sampling.height
        for shard in shards:
            report.failures += check_tar(out, shard, rows, w, h, recipe.sampling.num_frames)
    counts = manifest.counts
    report.expectations = corpus_expectations(
        rows,
        file_table(out, manifest.shards),
        class_table(rows, counts.planned_per_class, counts.target_accepted_per_class),
        recipe_hash=manifest.recipe_hashes,  # its recipe copy is published: not rehashed
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
    """The balanced index (where the manifest names it: `_index/balanced.parquet`, or
    `balanced.parquet` beside the shards in older builds) reads with pyarrow and pandas and
    holds exactly the target per class."""
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
    report.failures += check_stats(out, manifest)
    if manifest.balance is not None:
        report.failures += check_balanced_index(out, manifest.balance)
    listed = {name for e in manifest.shards for name in e.files} | set(manifest.files)
    for p in sorted(out.glob("*.tar")) + sorted(out.glob("*.parquet")):
        if p.name not in listed:
            report.failures.append(f"{p.name}: shard file not listed in the manifest")
    if manifest.status != "complete":
        report.failures.append(f"manifest status is {manifest.status!r}")
    return report
