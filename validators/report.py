"""The data-quality report: report.json and one self-contained report.html (no network).

Two steps: `load_report_data` reads everything once (the typed manifest, every Parquet row,
a few images per class); `report_json` and `render_html` then work on that data with no I/O.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.schemas.manifest import (
    REPORT_HTML,
    REPORT_JSON,
    STATE_DIR,
    Manifest,
    shard_files,
    stats_name,
)
from synthgen.schemas.recipe import METRIC_NAMES
from synthgen.schemas.records import (
    REJECT_IMAGE_FIELD,
    missing_vector,
    read_build_constants,
    rejected_image_bytes,
)
from synthgen.schemas.scores import image_embedding_column
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.storage.codecs import readable_extensions
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators import svgchart, svgline
from synthgen.validators.corpus import empty_rows, read_manifest
from synthgen.validators.nearest import ReferenceSet, nearest, read_reference
from synthgen.validators.trend import build_trend, read_previous_report

GRID_PER_CLASS = 10
PAIRS_PER_CLASS = 5
PER_REASON = 8
FIRST_FAILURES = 20  # failed samples listed with their messages
MAP_POINTS = 2000  # reference points on the embedding map at most (a fixed subsample)
REPORT_VERSION = 3  # report.json layout; see docs/metrics.md


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, loaded once."""

    out: Path
    manifest: Manifest
    rows: pd.DataFrame  # every attempted sample, image bytes dropped
    accepted_images: dict[str, list[bytes]]  # class name -> up to GRID_PER_CLASS images
    rejected_images: dict[str, list[tuple[bytes, str]]]  # class name -> (image, reason)
    reference: ReferenceSet | None = None  # embedded real images (metrics, map, pairs)
    reference_location: str | None = None
    reason_images: dict[str, list[bytes]] | None = None  # reason -> up to PER_REASON images
    sample_images: dict[str, bytes] | None = None  # key -> image, for the nearest pairs
    constants: dict[str, Any] | None = None  # build-wide provenance (Parquet file metadata)
    # the sample keys of the images above, in the same order (thumbnail captions)
    accepted_keys: dict[str, list[str]] | None = None
    rejected_keys: dict[str, list[str]] | None = None
    reason_keys: dict[str, list[str]] | None = None


def _reference(
    out: Path, manifest: Manifest, given: tuple[Path, str] | None
) -> tuple[ReferenceSet | None, str | None]:
    """The reference set to show: the one given, else the build's own cached one."""
    if given is not None:
        return read_reference(given[0]), given[1]
    info = manifest.metrics
    if info is not None and info.reference_cache and (out / info.reference_cache).is_file():
        return read_reference(out / info.reference_cache), info.reference
    return None, None


def load_report_data(
    out: Path, manifest: Manifest | None = None, reference: tuple[Path, str] | None = None
) -> ReportData:
    """Read the manifest (unless given), each shard's Parquet once and tars until the
    sample grids are full; the reference set (`reference`: its cache file and source, else
    the build's own) when there is one."""
    manifest = manifest or read_manifest(out)
    shards = manifest.shard_ids
    tables = []
    rejected: dict[str, list[tuple[bytes, str]]] = {}
    rejected_keys: dict[str, list[str]] = {}
    by_reason: dict[str, list[bytes]] = {}
    reason_keys: dict[str, list[str]] = {}
    for shard in shards:
        table = pq.read_table(out / shard_files(shard).parquet)
        picked = table.select(
            ["key", "class_name", "status", "reject_reason", REJECT_IMAGE_FIELD.name]
        )
        for row in picked.to_pylist():
            bucket = rejected.setdefault(row["class_name"], [])
            image = rejected_image_bytes(row[REJECT_IMAGE_FIELD.name])
            if row["status"] == "rejected" and image:
                if len(bucket) < GRID_PER_CLASS:
                    bucket.append((image, str(row["reject_reason"])))
                    rejected_keys.setdefault(row["class_name"], []).append(str(row["key"]))
                mine = by_reason.setdefault(str(row["reject_reason"]), [])
                if len(mine) < PER_REASON:
                    mine.append(image)
                    reason_keys.setdefault(str(row["reject_reason"]), []).append(str(row["key"]))
        tables.append(table.drop_columns([REJECT_IMAGE_FIELD.name]))
    rows = pa.concat_tables(tables).to_pandas() if tables else empty_rows(manifest.score_columns)
    constants = read_build_constants(tables[0].schema) if tables else {}
    classes = list(manifest.counts.planned_per_class)
    ref, location = _reference(out, manifest, reference)
    column = _embedding_column(manifest)
    wanted = {p["key"]: b"" for p in nearest_pairs(rows, ref, column)} if ref and column else {}
    accepted_keys: dict[str, list[str]] = {}
    accepted = _accepted_images(out, shards, classes, GRID_PER_CLASS, wanted, accepted_keys)
    return ReportData(
        out,
        manifest,
        rows,
        accepted,
        rejected,
        ref,
        location,
        by_reason,
        wanted,
        constants,
        accepted_keys,
        rejected_keys,
        reason_keys,
    )


def has_vector(value: Any) -> bool:
    """Whether a vector cell holds a vector (a failed row's holds nulls)."""
    return not missing_vector(value)


def _embedding_column(manifest: Manifest) -> str | None:
    return image_embedding_column(manifest.score_columns)


def nearest_pairs(
    rows: pd.DataFrame,
    ref: ReferenceSet | None,
    column: str | None,
    per_class: int = PAIRS_PER_CLASS,
    found: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Per class, the accepted samples closest to a reference image (memorization review),
    most similar first: key, class_name, nearest_ref, index, similarity, phash_distance.
    Classes in label order."""
    pairs = accepted_nearest(rows, ref, column) if found is None else found
    order = {c: i for i, c in enumerate(_label_order(rows))}
    out: list[dict[str, Any]] = []
    for cls in sorted({p["class_name"] for p in pairs}, key=lambda c: (order.get(c, 1 << 30), c)):
        ranked = sorted(
            (p for p in pairs if p["class_name"] == cls), key=lambda p: (-p["similarity"], p["key"])
        )
        out += [dict(p) for p in ranked[:per_class]]
    return out


def _label_order(rows: pd.DataFrame) -> list[str]:
    """Class names by class label (then name), from the rows."""
    if not len(rows) or "class_label" not in rows:
        return sorted({str(c) for c in rows["class_name"]}) if len(rows) else []
    pairs = rows[["class_label", "class_name"]].drop_duplicates()
    ranked = sorted(
        ((-1 if pd.isna(lbl) else int(lbl), str(n)) for lbl, n in pairs.itertuples(index=False))
    )
    return list(dict.fromkeys(n for _, n in ranked))


def accepted_nearest(
    rows: pd.DataFrame, ref: ReferenceSet | None, column: str | None
) -> list[dict[str, Any]]:
    """Every accepted sample with its nearest reference image (stored embeddings): key,
    class_name, nearest_ref, index, similarity, phash_distance."""
    if ref is None or column is None or column not in rows or not len(rows):
        return []
    mine = rows[(rows["status"] == "accepted") & rows[column].map(has_vector)]
    if mine.empty:
        return []
    found = nearest(list(mine[column]), list(mine["phash"]), ref)
    from synthgen.schemas.records import public_reference

    return [
        {
            "key": key,
            "class_name": cls,
            "nearest_ref": public_reference(f.ref),  # a WebDataset shard by its name
            "index": f.index,
            "similarity": f.similarity,
            "phash_distance": f.phash_distance,
        }
        for key, cls, f in zip(mine["key"], mine["class_name"], found, strict=True)
    ]


def _accepted_images(
    out: Path,
    shards: list[int],
    classes: list[str],
    per_class: int,
    keyed: dict[str, bytes] | None = None,
    keys: dict[str, list[str]] | None = None,
) -> dict[str, list[bytes]]:
    """Up to `per_class` accepted images per class (their sample keys into `keys`, when
    given); the images of the keys in `keyed` are filled in there too (the nearest-pair
    review needs those samples)."""
    found: dict[str, list[bytes]] = {}
    for shard in shards:
        full = classes and all(len(found.get(c, [])) >= per_class for c in classes)
        if full and not (keyed and any(not v for v in keyed.values())):
            break
        tar = out / shard_files(shard).tar
        image_exts = readable_extensions()  # a codec plug-in's images show too
        for sample in iter_tar_samples(tar, extensions={*image_exts, "json"}):
            parts = sample.members
            image = next((parts[e] for e in image_exts if e in parts), None)
            if image is None or "json" not in parts:
                continue
            if keyed is not None and sample.key in keyed:
                keyed[sample.key] = image
            cls = json.loads(parts["json"])["class_name"]
            bucket = found.setdefault(cls, [])
            if len(bucket) < per_class:
                bucket.append(image)
                if keys is not None:
                    keys.setdefault(cls, []).append(sample.key)
    return found


# -- what the report says (report.json) ----------------------------------------------------


def _score_stats(rows: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for column in columns:
        if column not in rows:
            continue
        per_class = {}
        for cls, values in rows.groupby("class_name")[column]:
            v = values.dropna().to_numpy(dtype=float)
            if v.size == 0:
                continue
            q = np.quantile(v, [0.05, 0.5, 0.95])
            per_class[str(cls)] = {
                "mean": float(v.mean()),
                "min": float(v.min()),
                "p05": float(q[0]),
                "median": float(q[1]),
                "p95": float(q[2]),
                "max": float(v.max()),
            }
        out[column] = per_class
    return out


def embedding_spread(rows: pd.DataFrame, column: str) -> dict[str, dict[str, Any]]:
    """Per class: mean cosine distance of its samples' embeddings to the class centroid
    (the mean of all its synthetic samples, accepted and rejected), split by status.

    A tight class (small spread) is a sign of low diversity; rejects far from the centroid
    are off-class images. None where a class has no sample of that status.
    """
    out: dict[str, dict[str, Any]] = {}
    if column not in rows:
        return out
    for cls, group in rows.groupby("class_name"):
        present = group[group[column].map(has_vector)]
        if present.empty:
            continue
        emb = np.stack([np.asarray(v, dtype=np.float64) for v in present[column]])
        emb /= np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        centroid = emb.mean(axis=0)
        norm = np.linalg.norm(centroid)
        if norm == 0:
            continue
        distance = 1.0 - emb @ (centroid / norm)
        entry: dict[str, Any] = {}
        for status in ("accepted", "rejected"):
            mine = distance[(present["status"] == status).to_numpy()]
            entry[status] = float(mine.mean()) if mine.size else None
            entry[f"n_{status}"] = int(mine.size)
        out[str(cls)] = entry
    return out


def _metrics(data: ReportData) -> dict[str, Any] | None:
    """The metrics block: the manifest's, unless another reference was given (then computed
    from the stored embeddings, exactly as the build does)."""
    info = data.manifest.metrics
    given = data.reference_location
    if info is not None and (given is None or given == info.reference):
        return info.model_dump(mode="json")
    column = _embedding_column(data.manifest)
    if data.reference is None or column is None or column not in data.rows:
        return None
    from synthgen.validators.metrics import DEFAULT_K, corpus_metrics

    accepted = data.rows[(data.rows["status"] == "accepted") & data.rows[column].map(has_vector)]
    synthetic = {
        str(cls): np.stack([np.asarray(v, dtype=np.float32) for v in group[column]])
        for cls, group in accepted.groupby("class_name")
    }
    names = _class_names(data)
    real = {names[c]: v for c, v in data.reference.by_class().items() if c in names}
    computed = corpus_metrics(synthetic, real, DEFAULT_K)
    from synthgen.schemas.records import public_path

    return {
        "metrics_version": 1,
        "reference": None if given is None else public_path(given),  # published: by name
        "reference_images": len(data.reference),
        "embedding_column": column,
        **computed,
    }


def _class_names(data: ReportData) -> dict[int, str]:
    rows = data.rows
    if not len(rows):
        return {}
    pairs = rows[["class_label", "class_name"]].drop_duplicates()
    return {int(i): str(n) for i, n in zip(pairs["class_label"], pairs["class_name"], strict=True)}


def embedding_map(data: ReportData) -> dict[str, Any] | None:
    """A 2-D PCA projection of the synthetic samples' embeddings and the reference's
    (fitted on both): points as [x, y, class, status] with status accepted / rejected /
    reference; at most MAP_POINTS reference points (a fixed subsample)."""
    column = _embedding_column(data.manifest)
    rows = data.rows
    if column is None or column not in rows or not len(rows):
        return None
    mine = rows[rows[column].map(has_vector)]
    if mine.empty:
        return None
    synth = np.stack([np.asarray(v, dtype=np.float64) for v in mine[column]])
    labels = [str(c) for c in mine["class_name"]]
    status = [str(s) for s in mine["status"]]
    if data.reference is not None:
        names = _class_names(data)
        idx = np.arange(len(data.reference))
        if len(idx) > MAP_POINTS:
            idx = np.sort(np.random.default_rng(0).choice(len(idx), MAP_POINTS, replace=False))
        keep = [i for i in idx.tolist() if data.reference.labels[i] in names]
        ref = data.reference.embeddings[keep].astype(np.float64)
        labels += [names[data.reference.labels[i]] for i in keep]
        status += ["reference"] * len(keep)
        synth = np.concatenate([synth, ref])
    centred = synth - synth.mean(0)
    xy, explained = _top_components(centred)
    return {
        "method": "pca",
        "explained_variance": [float(v) for v in explained],
        "points": [
            [round(float(x), 5), round(float(y), 5), c, s]
            for (x, y), c, s in zip(xy, labels, status, strict=True)
        ],
    }


def _top_components(centred: np.ndarray, k: int = 2) -> tuple[np.ndarray, list[float]]:
    """The first `k` principal coordinates of centred rows and their explained variance.

    From the eigenvectors of the d x d scatter matrix (d = the embedding size, 512 here):
    a fraction of a full SVD's cost on thousands of rows. Each axis's sign is fixed so that
    its largest loading is positive, so the map does not flip between machines."""
    n, d = centred.shape
    if n < 2 or d < k:
        return np.zeros((n, k)), []
    values, vectors = np.linalg.eigh(centred.T @ centred)  # ascending
    top = vectors[:, ::-1][:, :k]
    signs = np.sign(top[np.abs(top).argmax(0), np.arange(k)])
    top = top * np.where(signs == 0, 1.0, signs)
    total = max(float(values.clip(min=0).sum()), 1e-12)
    return centred @ top, [float(v) / total for v in values[::-1][:k].clip(min=0)]


RUNS_NAME = "runs.jsonl"  # under .synthgen/: one line per process that worked on the build


def _parse_time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def record_run_start(out: Path, at: str | None = None) -> None:
    """Append this run's start (ISO-8601 UTC) to the build's run log, `.synthgen/runs.jsonl`:
    the report's build time leaves out the idle time between an interrupted run and its
    `--resume`."""
    stamp = at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = out / STATE_DIR / RUNS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"started_at": stamp}) + "\n")


def _run_starts(out: Path) -> list[datetime]:
    try:
        lines = (out / STATE_DIR / RUNS_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    starts = []
    for line in lines:
        try:
            when = _parse_time(json.loads(line).get("started_at"))
        except (ValueError, AttributeError):
            continue
        if when is not None:
            starts.append(when)
    return sorted(starts)


def _shard_times(out: Path, manifest: Manifest) -> list[datetime]:
    """When each shard was finished: its stats file's modification time."""
    times = []
    for shard in manifest.shard_ids:
        try:
            mtime = (out / stats_name(shard)).stat().st_mtime
        except OSError:
            continue
        times.append(datetime.fromtimestamp(mtime, UTC))
    return sorted(times)


def build_runs(out: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """The runs that made the build, from the run log: each from its start to its last sign
    of work (the last shard it finished; the last run: the manifest's `finished_at`). Runs
    that started after `finished_at` (a later `report` or a no-op resume) are left out; the
    first run starts at the build's `created_at`."""
    created, finished = _parse_time(manifest.created_at), _parse_time(manifest.finished_at)
    if created is None or finished is None:
        return []
    # The first run starts at `created_at` (the build's state is written as it starts): the
    # first logged start, within a moment of it, is that run's. Both times are recorded to
    # the second (finished_at too: a run starting in its last second still counts).
    logged = [t for t in _run_starts(out) if t < finished + timedelta(seconds=1)]
    if logged and timedelta(0) <= logged[0] - created < timedelta(seconds=2):
        logged = logged[1:]
    starts = [created, *(t for t in logged if t > created)]
    shards = _shard_times(out, manifest)
    runs = []
    for i, begin in enumerate(starts):
        if i + 1 == len(starts):  # `finished_at` is to the second: a shard may be later
            end = max([finished, begin, *(t for t in shards if t >= begin)])
        else:
            nxt = starts[i + 1]
            end = max([t for t in shards if begin <= t < nxt], default=begin)
        runs.append(
            {
                "started_at": begin.isoformat().replace("+00:00", "Z"),
                "ended_at": end.isoformat().replace("+00:00", "Z"),
                "seconds": max(0.0, (end - begin).total_seconds()),
            }
        )
    return runs


def _timing(manifest: Manifest, out: Path | None = None) -> dict[str, Any]:
    """Wall time (created_at to finished_at), the active time (the runs' sum: on a resumed
    build the idle time between runs is left out) and the rates over the active time."""
    start, end = _parse_time(manifest.created_at), _parse_time(manifest.finished_at)
    wall = (end - start).total_seconds() if start and end else None
    runs = build_runs(out, manifest) if out is not None else []
    if runs and wall is not None:  # the last run may end after `finished_at`, kept to the second
        last = _parse_time(runs[-1]["ended_at"])
        if last is not None and start is not None:
            wall = max(wall, (last - start).total_seconds())
    active = sum(r["seconds"] for r in runs) if runs else wall
    if active is not None and wall is not None:
        active = min(active, wall)
    attempted = manifest.counts.attempted
    return {
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "wall_seconds": wall,
        "samples_per_second": attempted / active if active else None,
        "accepted_per_second": manifest.counts.accepted / active if active else None,
        "active_seconds": active,
        "idle_seconds": None if wall is None or active is None else max(0.0, wall - active),
        "runs": runs or None,
    }


def class_order(manifest: Manifest, rows: pd.DataFrame | None = None) -> list[str]:
    """Class names in label order: the recipe's classes by id, then any other class the
    rows (by label) or the plan name."""
    classes = manifest.recipe.get("classes") or []
    ranked = sorted(
        (int(c["id"]), str(c["name"]))
        for c in classes
        if isinstance(c, dict) and "id" in c and "name" in c
    )
    names = [n for _, n in ranked]
    more = _label_order(rows) if rows is not None else []
    return list(dict.fromkeys([*names, *more, *manifest.counts.planned_per_class]))


def _ordered(values: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """`values` with its keys in `order` (keys not in it after, sorted)."""
    rank = {c: i for i, c in enumerate(order)}
    return {k: values[k] for k in sorted(values, key=lambda k: (rank.get(k, len(rank)), k))}


def check_thresholds(manifest: Manifest, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Each threshold check of the build's recipe: check, column, keep (`above`: a sample
    below the threshold is rejected; `below`: above it), the absolute threshold, or the
    per-class quantile and each class's cut (recomputed from the scores exactly as the
    build-wide step does, over every sample with an image)."""
    from synthgen.schemas.recipe import recipe_from_dict
    from synthgen.validators.build_checks import make_checks
    from synthgen.validators.checks.near_copy import NearCopy
    from synthgen.validators.checks.threshold import ScoreThreshold
    from synthgen.validators.dedup import quantile_threshold

    try:
        recipe = recipe_from_dict(manifest.recipe, "manifest.json")
        checks, _ = make_checks(recipe, manifest.score_columns)
    except (ValueError, TypeError):
        return []
    imaged = rows[rows["status"] != "failed"] if len(rows) else rows
    order = class_order(manifest, rows)
    out: list[dict[str, Any]] = []
    for check in checks:
        if isinstance(check, ScoreThreshold):
            entry: dict[str, Any] = {
                "check": check.name,
                "column": check.column,
                "keep": "above" if check.keep_above else "below",
                "absolute": check.threshold if isinstance(check.threshold, float | int) else None,
                "quantile": check.quantile,
                "per_class": None,
            }
            if check.quantile is not None and check.column in imaged:
                cuts = {}
                for cls, values in imaged.groupby("class_name")[check.column]:
                    cut = quantile_threshold(
                        pd.to_numeric(values, errors="coerce").dropna().tolist(),
                        check.quantile,
                        check.keep_above,
                    )
                    cuts[str(cls)] = float(cut) if np.isfinite(cut) else None
                entry["per_class"] = _ordered(cuts, order)
            out.append(entry)
        elif isinstance(check, NearCopy):
            out.append(
                {
                    "check": check.name,
                    "column": f"{check.prefix}_sim",
                    "keep": "below",
                    "absolute": check.spec.min_similarity,
                    "quantile": None,
                    "per_class": None,
                    "max_phash_distance": check.spec.max_phash_distance,
                }
            )
    return out


def near_copy_verdicts(manifest: Manifest, found: list[dict[str, Any]]) -> dict[str, Any]:
    """The near-copy verdicts `synthgen validate --reference` prints, from every accepted
    sample's nearest reference image: the rule (the recipe's `checks.near_copy`, else the
    default) and the accepted samples it flags, most similar first."""
    from synthgen.schemas.recipe import NearCopySpec
    from synthgen.validators.nearest import is_near_copy

    spec_data = (manifest.recipe.get("checks") or {}).get("near_copy")
    spec = NearCopySpec.model_validate(spec_data) if spec_data else NearCopySpec()
    flagged = sorted(
        (p for p in found if is_near_copy(spec, p["similarity"], p["phash_distance"])),
        key=lambda p: (-p["similarity"], p["key"]),
    )
    return {
        "rule": spec.model_dump(mode="json"),
        "checked": len(found),
        "count": len(flagged),
        "samples": flagged,
    }


# what `balance_rounds` counts per round and class, in its tables' column order
ROUND_FIELDS = ("requested", "made", "accepted", "quality_rejects", "surplus", "failed")


def balance_rounds(manifest: Manifest, rows: pd.DataFrame) -> list[dict[str, Any]] | None:
    """Per round of a balancing build, per class: `requested` (planned), `made` (samples
    attempted), `accepted`, `quality_rejects` (a check rejected it), `surplus` (passed every
    check, beyond what the class still needed), `failed`. A round's samples are told apart by
    their index: each round plans the next indices of every class it tops up."""
    if manifest.balance is None:
        return None
    order = class_order(manifest, rows)
    next_index: dict[str, int] = {}
    out = []
    for r in manifest.balance.rounds:
        per_class = {}
        for cls, requested in r.planned.items():
            first = next_index.get(cls, 0)
            next_index[cls] = first + requested
            if len(rows):
                mine = rows[
                    (rows["class_name"] == cls)
                    & (rows["index"] >= first)
                    & (rows["index"] < first + requested)
                ]
            else:
                mine = rows
            rejected = mine[mine["status"] == "rejected"] if len(mine) else mine
            surplus = int((rejected["reject_reason"] == "surplus").sum()) if len(rejected) else 0
            per_class[cls] = {
                "requested": int(requested),
                "made": len(mine),
                "accepted": int((mine["status"] == "accepted").sum()) if len(mine) else 0,
                "quality_rejects": len(rejected) - surplus,
                "surplus": surplus,
                "failed": int((mine["status"] == "failed").sum()) if len(mine) else 0,
            }
        per_class = _ordered(per_class, order)
        total = {k: sum(v[k] for v in per_class.values()) for k in ROUND_FIELDS}
        out.append({"round": r.round, "per_class": per_class, "total": total})
    return out


SURPLUS = "surplus"  # the reject reason of an accepted sample beyond a balancing target


def reject_split(rejects_by_reason: dict[str, int]) -> dict[str, Any]:
    """Rejects split into quality rejects (a check failed) and `surplus` (passed every check,
    not needed: a balancing build's quota)."""
    quality = {k: v for k, v in rejects_by_reason.items() if k != SURPLUS}
    return {
        "quality": sum(quality.values()),
        "quality_by_reason": quality,
        "surplus": int(rejects_by_reason.get(SURPLUS, 0)),
    }


def _bound_row(
    name: str, scope: str, value: Any, lo: Any, hi: Any, kind: str = "number"
) -> dict[str, Any]:
    """One bound of the verdict card: the build's value and whether it is within."""
    within = None
    if value is not None:
        within = (lo is None or value >= lo) and (hi is None or value <= hi)
    return {
        "name": name,
        "scope": scope,
        "value": value,
        "min": lo,
        "max": hi,
        "within": within,
        "kind": kind,
    }


def _bounds(report: dict[str, Any], manifest: Manifest) -> list[dict[str, Any]]:
    """Each bound the recipe sets: accepted and failed fractions, then every gated metric
    (overall, and per class unless the gate says not)."""
    counts = report["counts"]
    attempted = int(manifest.counts.attempted)
    recipe_validation = manifest.recipe.get("validation") or {}
    rate = int(counts["accepted"]) / attempted if attempted else None
    rows = [
        _bound_row(
            "accepted fraction",
            "overall",
            rate,
            recipe_validation.get("min_accepted_fraction") or None,
            None,
            "fraction",
        ),
        _bound_row(
            "failed fraction",
            "overall",
            int(counts.get("failed") or 0) / attempted if attempted else None,
            None,
            recipe_validation.get("max_failed_fraction", 0.001),
            "fraction",
        ),
    ]
    metrics = report.get("metrics") or {}
    for name, gate in sorted((recipe_validation.get("metrics") or {}).items()):
        lo, hi = gate.get("min"), gate.get("max")
        rows.append(_bound_row(name, "overall", (metrics.get("overall") or {}).get(name), lo, hi))
        if gate.get("per_class", True):
            for cls, values in (metrics.get("per_class") or {}).items():
                if values.get(name) is not None:
                    rows.append(_bound_row(name, f"class:{cls}", values[name], lo, hi))
    return rows


def verdict(report: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    """The card at the top of the page: the gate's outcome, accepted / attempted, and each
    bound the recipe sets (accepted and failed fractions, every gated metric) with the
    build's value and whether it is within; the build's active time."""
    attempted = int(manifest.counts.attempted)
    accepted = int(report["counts"]["accepted"])
    validation = manifest.validation
    split = reject_split(report["rejects_by_reason"])
    return {
        "gate": None if validation is None else ("pass" if validation.success else "fail"),
        "status": manifest.status,
        "accepted": accepted,
        "attempted": attempted,
        "accept_rate": accepted / attempted if attempted else None,
        "passed_checks_rate": (accepted + split["surplus"]) / attempted if attempted else None,
        "bounds": _bounds(report, manifest),
        "active_seconds": report["timing"].get("active_seconds"),
        "idle_seconds": report["timing"].get("idle_seconds"),
    }


# great_expectations type -> what it checks, in words
EXPECTATION_WORDS = {
    "expect_column_values_to_be_unique": "values are unique",
    "expect_column_values_to_match_regex": "values match a pattern",
    "expect_column_values_to_be_in_set": "values are in a set",
    "expect_column_values_to_not_be_null": "no missing values",
    "expect_column_values_to_be_between": "values within bounds",
    "expect_column_pair_values_to_be_equal": "two columns are equal",
    "metrics_computed": "metrics could be computed",
}


def _bound_text(kwargs: dict[str, Any]) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    parts = []
    if lo is not None and hi is not None:
        parts.append(f"{fmt_set(lo)} … {fmt_set(hi)}" if lo != hi else f"= {fmt_set(lo)}")
    elif lo is not None:
        parts.append(f"≥ {fmt_set(lo)}")
    elif hi is not None:
        parts.append(f"≤ {fmt_set(hi)}")
    if "value_set" in kwargs:
        values = [str(v) for v in kwargs["value_set"]]
        shown = [v if len(v) <= 16 else v[:12] + "…" for v in values[:4]]
        more = f", … ({len(values)} values)" if len(values) > 4 else ""
        parts.append("in {" + ", ".join(shown) + more + "}")
    if "regex" in kwargs:
        parts.append(f"matches {kwargs['regex']}")
    if kwargs.get("mostly") is not None:
        parts.append(f"for at least {fmt_pct(kwargs['mostly'])} of rows")
    return " ".join(parts) or "–"


def expectation_table(expectations: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate's great_expectations results as table rows: dataset, expectation (in words,
    and its type), column, bound, observed, pass."""
    out = []
    for e in expectations.get("expectations", []):
        kw = e.get("kwargs") or {}
        if "column_A" in kw:
            column = f"{kw['column_A']} = {kw['column_B']}"
        else:
            column = str(kw.get("column", ""))
        observed = e.get("detail") or ("as expected" if e["success"] else "–")
        out.append(
            {
                "dataset": e["dataset"],
                "expectation": EXPECTATION_WORDS.get(
                    e["expectation"], e["expectation"].removeprefix("expect_").replace("_", " ")
                ),
                "type": e["expectation"],
                "column": column,
                "bound": _bound_text(kw),
                "observed": observed,
                "pass": bool(e["success"]),
            }
        )
    return out


# -- numbers for people --------------------------------------------------------------------


def fmt_int(value: Any) -> str:
    """A count with thousands separators: 12,345."""
    return "–" if value is None else f"{int(value):,}"


def fmt_num(value: Any) -> str:
    """A measurement with sensible decimals: 1,234 / 123.4 / 12.34 / 0.123 / 1.2e-04."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–" if value is None else str(value)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return str(value)
    if isinstance(value, int | np.integer):
        return fmt_int(value)
    v = float(value)
    a = abs(v)
    if v == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.1e}"


def fmt_set(value: Any) -> str:
    """A value someone set (a threshold, a bound): as written, `0.3`, `-0.085`, `1,000`."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,g}" if abs(value) >= 1000 else f"{value:g}"


def fmt_pct(fraction: Any) -> str:
    """A fraction as a percentage: 0.875 -> 87.5 %."""
    if fraction is None:
        return "–"
    pct = 100.0 * float(fraction)
    text = f"{pct:.1f}".removesuffix(".0") if pct >= 10 or pct == 0 else f"{pct:.2g}"
    return f"{text} %"


def fmt_duration(seconds: Any) -> str:
    """Seconds for people: 8.2 s, 1 min 12 s, 2 h 5 min."""
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    total = round(s)
    if total < 3600:
        minutes, rest = divmod(total, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(total, 3600)
    minutes = rest // 60
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _counts(manifest: Manifest, rows: pd.DataFrame) -> dict[str, Any]:
    """The manifest's counts, and per class the planned and the accepted samples."""
    counts = manifest.counts
    accepted = rows[rows["status"] == "accepted"].groupby("class_name").size().to_dict()
    return {
        "planned": counts.planned,
        "accepted": counts.accepted,
        "rejected": counts.rejected,
        "failed": counts.failed,
        "per_class": {
            c: {"planned": n, "accepted": int(accepted.get(c, 0))}
            for c, n in counts.planned_per_class.items()
        },
    }


def _rejects(rows: pd.DataFrame) -> dict[str, Any]:
    """Rejected samples per reason, and per class and reason (`class/reason`)."""
    rejected = rows[rows["status"] == "rejected"]
    return {
        "rejects_by_reason": {
            str(k): int(v) for k, v in rejected["reject_reason"].value_counts().items()
        },
        "rejects_by_class_and_reason": {
            f"{c}/{r}": int(n)
            for (c, r), n in rejected.groupby(["class_name", "reject_reason"]).size().items()
        },
    }


def _provenance(data: ReportData) -> dict[str, Any]:
    """The model, the generation settings of the first sample with an image (over the
    build constants), scorers, versions and the build's times."""
    manifest, rows = data.manifest, data.rows
    imaged = rows[rows["status"] != "failed"] if len(rows) else rows  # failed: no image
    first = {**(data.constants or {}), **(imaged.iloc[0].to_dict() if len(imaged) else {})}
    return {
        "model": manifest.model.to_dict(),
        "pipeline_class": first.get("pipeline_class"),
        "scheduler": first.get("scheduler"),
        "steps": first.get("steps"),
        "guidance_scale": first.get("guidance_scale"),
        "resolution": f"{first.get('width')}x{first.get('height')}",
        "dtype": first.get("dtype"),
        "device": first.get("device"),
        "scorers": manifest.scorers,
        "versions": manifest.versions,
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
    }


def _reference_blocks(data: ReportData) -> dict[str, Any]:
    """What the reference set adds: the metrics, the nearest pairs (each marked when a near
    copy) and the near-copy verdicts."""
    column = _embedding_column(data.manifest)
    metrics = _metrics(data)
    found = accepted_nearest(data.rows, data.reference, column)
    pairs = nearest_pairs(data.rows, data.reference, column, found=found)
    copies = (
        near_copy_verdicts(data.manifest, found) if data.reference is not None and found else None
    )
    if copies is not None:
        flagged = {p["key"] for p in copies["samples"]}
        for pair in pairs:
            pair["near_copy"] = pair["key"] in flagged
    return {"metrics": metrics, "nearest_pairs": pairs, "near_copies": copies}


def report_json(data: ReportData) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (the content of report.json)."""
    manifest, rows = data.manifest, data.rows
    scalars = [c.name for c in manifest.score_columns if not c.is_vector]
    vectors = [c.name for c in manifest.score_columns if c.is_vector]
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "output": data.out.resolve().name,  # the build's folder by name: published
        "status": manifest.status,
        "recipe_name": manifest.recipe_name,
        "recipe_hash": manifest.recipe_hash,
        "counts": _counts(manifest, rows),
        **_rejects(rows),
        "score_columns": [c.model_dump(mode="json") for c in manifest.score_columns],
        "scores": _score_stats(rows, scalars),
        "embedding_spread": {name: embedding_spread(rows, name) for name in vectors},
        "expectations": manifest.validation.model_dump(mode="json") if manifest.validation else {},
        "provenance": _provenance(data),
    }
    if manifest.balance is not None:
        # a balance block without closed-loop rounds reads as it did before they existed
        unset = {"feedback"} if manifest.balance.feedback is None else None
        report["balance"] = manifest.balance.model_dump(mode="json", exclude=unset)
    report["usage"] = _usage(manifest)
    report["content_credentials"] = _content_credentials(manifest)
    report.update(_reference_blocks(data))
    report["embedding_map"] = embedding_map(data)
    report["timing"] = _timing(manifest, data.out)
    report["failures"] = failures(rows)
    order = class_order(manifest, rows)
    report["class_order"] = order
    _in_label_order(report, order)
    report["thresholds"] = check_thresholds(manifest, rows)
    report["rejects"] = reject_split(report["rejects_by_reason"])
    report["balance_rounds"] = balance_rounds(manifest, rows)
    report["expectations_table"] = expectation_table(report["expectations"] or {})
    report["verdict"] = verdict(report, manifest)
    return report


def _in_label_order(report: dict[str, Any], order: list[str]) -> None:
    """Every per-class mapping of the report with its classes in label order."""
    report["counts"]["per_class"] = _ordered(report["counts"]["per_class"], order)
    for key in ("scores", "embedding_spread"):
        report[key] = {col: _ordered(v, order) for col, v in report[key].items()}
    rank = {c: i for i, c in enumerate(order)}
    report["rejects_by_class_and_reason"] = {
        k: report["rejects_by_class_and_reason"][k]
        for k in sorted(
            report["rejects_by_class_and_reason"],
            key=lambda k: (rank.get(k.split("/", 1)[0], len(rank)), k),
        )
    }
    metrics = report.get("metrics")
    if metrics and isinstance(metrics.get("per_class"), dict):
        report["metrics"] = {**metrics, "per_class": _ordered(metrics["per_class"], order)}
    fails = report.get("failures") or {}
    if fails.get("by_class"):
        fails["by_class"] = _ordered(fails["by_class"], order)
    if "balance" in report:
        for key in ("target", "before", "after"):
            report["balance"][key] = _ordered(report["balance"][key], order)


def _usage(manifest: Manifest) -> dict[str, Any]:
    """The model's licence (and where it was read) and the recipe's usage statement."""
    usage = manifest.usage
    return {
        "license": usage.license if usage else None,
        "license_source": usage.license_source if usage else None,
        "usage": usage.usage if usage else None,
    }


def _content_credentials(manifest: Manifest) -> dict[str, Any]:
    """Whether accepted images carry C2PA content credentials, and the signing algorithm."""
    spec = (manifest.recipe.get("output") or {}).get("c2pa")
    if not spec:
        return {"c2pa": False}
    return {"c2pa": True, "alg": spec.get("alg"), "timestamp_url": spec.get("timestamp_url")}


def with_trend(report: dict[str, Any], manifest: Manifest, previous: Path | None) -> None:
    """Add `trend` to a report: the comparison with the previous build's report.json, or
    None when there is no previous build (or it has no readable report)."""
    before = read_previous_report(previous) if previous is not None else None
    if before is None or previous is None:
        report["trend"] = None
        return
    gates = ((manifest.recipe.get("validation") or {}).get("metrics")) or {}
    report["trend"] = build_trend(report, before, previous, gates)


def earlier_previous(out: Path) -> Path | None:
    """The build the report.json already in `out` compared with (its trend's `previous`),
    when that build still holds a report.json; else None."""
    before = read_previous_report(out)
    trend = (before or {}).get("trend")
    if not isinstance(trend, dict):
        return None
    where = (trend.get("previous") or {}).get("output")
    if not where:
        return None
    path = Path(str(where))
    if not path.is_absolute():  # by name (newer reports): a sibling under builds/
        path = out.resolve().parent / path
    if path.resolve() == out.resolve() or not (path / REPORT_JSON).is_file():
        return None
    return path


def failures(rows: pd.DataFrame, first: int = FIRST_FAILURES) -> dict[str, Any]:
    """Samples that failed (an exception while generating, scoring or encoding them): count,
    count per reason (`error:<ExceptionType>`) and per class, and the first keys (in key
    order) with their messages."""
    failed = rows[rows["status"] == "failed"] if len(rows) else rows
    if not len(failed):
        return {"count": 0, "by_reason": {}, "by_class": {}, "first": []}
    failed = failed.sort_values("key")
    message = failed["error_message"] if "error_message" in failed else [None] * len(failed)
    return {
        "count": len(failed),
        "by_reason": {
            str(k): int(v) for k, v in failed["reject_reason"].value_counts().sort_index().items()
        },
        "by_class": {
            str(k): int(v) for k, v in failed["class_name"].value_counts().sort_index().items()
        },
        "first": [
            {"key": k, "class_name": c, "reason": r, "message": m}
            for k, c, r, m in list(
                zip(
                    failed["key"],
                    failed["class_name"],
                    failed["reject_reason"],
                    message,
                    strict=True,
                )
            )[:first]
        ],
    }


# -- how it looks (report.html) ------------------------------------------------------------


THUMB = 64  # thumbnail height in the report, pixels


def _thumbnail(image: Any) -> Any:
    """`image` at about THUMB pixels high: small images upscaled by a whole factor (nearest
    neighbour, pixels stay crisp), large ones reduced (a 1024x1024 image is never encoded
    at full size into the page)."""
    from PIL import Image

    if image.height <= THUMB:
        factor = max(1, THUMB // image.height)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    width = max(1, round(image.width * THUMB / image.height))
    return image.resize((width, THUMB), Image.Resampling.BOX)


def _png_data_uri(images: list[bytes]) -> str | None:
    """A horizontal strip of thumbnails as a PNG data URI (a clip: a strip of its frames)."""
    from PIL import Image

    from synthgen.storage.codecs import preview_image

    decoded = [_thumbnail(preview_image(b).convert("RGB")) for b in images]
    if not decoded:
        return None
    h = max(im.height for im in decoded)
    gap = 8  # the white border between images, in thumbnail pixels
    strip = Image.new("RGB", (sum(im.width + gap for im in decoded), h + gap), (255, 255, 255))
    x = gap // 2
    for im in decoded:
        strip.paste(im, (x, gap // 2))
        x += im.width + gap
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MAP_DRAWN = 3000  # synthetic points of each status drawn on the map at most (fixed subsample)
HIST_BINS = 19  # shared bins of the score histograms


def _counts_chart(per_class: dict[str, dict[str, Any]]) -> str:
    names = list(per_class)
    return svgchart.grouped_bars(
        "planned vs accepted per class",
        names,
        [
            ("planned", [per_class[n]["planned"] for n in names], svgchart.PLANNED),
            ("accepted", [per_class[n]["accepted"] for n in names], svgchart.ACCEPTED),
        ],
        ylabel=["samples"],
    )


def _rejects_chart(rejects_by_reason: dict[str, int]) -> str:
    """The quality rejects by reason (`surplus` is no quality reject: left out)."""
    reasons = {k: v for k, v in rejects_by_reason.items() if k != SURPLUS}
    return svgchart.hbars(
        "rejects by reason",
        list(reasons),
        list(reasons.values()),
        svgchart.REJECTED,
        "rejected samples",
        empty="no rejects",
    )


def _spread_chart(column: str, spread: dict[str, Any], classes: list[str]) -> str:
    return svgchart.grouped_bars(
        f"embedding spread per class: {column}",
        classes,
        [
            (status, [spread[c][status] for c in classes], colour)
            for status, colour in (
                ("accepted", svgchart.ACCEPTED),
                ("rejected", svgchart.REJECTED),
            )
        ],
        ylabel=["mean cosine distance", "to class centroid"],
        title=column,
    )


def _balance_chart(balance: dict[str, Any]) -> str:
    classes = list(balance["before"])
    return svgchart.grouped_bars(
        "class histogram before and after balancing",
        classes,
        [
            ("before (real)", [balance["before"][c] for c in classes], svgchart.TAB10[0]),
            (
                "after (real + synthetic)",
                [balance["after"].get(c) for c in classes],
                svgchart.TAB10[1],
            ),
        ],
        ylabel=["images"],
    )


def feedback_block(report: dict[str, Any]) -> dict[str, Any] | None:
    """The closed-loop balancing record (`balance.feedback` of the manifest), or None for a
    build balanced otherwise (or not at all)."""
    feedback = (report.get("balance") or {}).get("feedback")
    return feedback if isinstance(feedback, dict) else None


# the learning curve's metrics: (ProbeMetrics field, legend name, colour)
CURVE_METRICS = (
    ("error", "held-out error", svgchart.TAB10[3]),
    ("minority_recall", "minority recall", svgchart.TAB10[0]),
)
# the curve's reference probes: (FeedbackInfo field, legend name, dash)
CURVE_REFERENCES = (
    ("baseline", "oversampling baseline", svgline.DASHED),
    ("real_only", "real only", svgline.DOTTED),
)


def feedback_curve(feedback: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per curve metric, the (synthetic images so far, value) point of every round."""
    return {
        field: [
            (float(r["synthetic_so_far"]), float(r["metrics"][field]))
            for r in feedback["rounds"]
            if r["metrics"].get(field) is not None
        ]
        for field, _, _ in CURVE_METRICS
    }


def _feedback_chart(feedback: dict[str, Any]) -> str:
    """The learning curve: each round's probe, held-out error and minority recall against
    the synthetic images it trained on; the baseline and real-only probes as lines."""
    points = feedback_curve(feedback)
    curves = [svgline.Curve(f"{name} (probe)", points[f], c) for f, name, c in CURVE_METRICS]
    refs = [
        svgline.Reference(f"{ref_name}: {name}", float(probe[f]), colour, dash)
        for key, ref_name, dash in CURVE_REFERENCES
        if isinstance(probe := feedback.get(key), dict)
        for f, name, colour in CURVE_METRICS
        if probe.get(f) is not None
    ]
    return svgline.lines(
        "closed-loop balancing: learning curve",
        curves,
        refs,
        xlabel="synthetic images so far",
        ylabel="held-out (cross-validated)",
    )


def _charts(report: dict[str, Any], rows: pd.DataFrame) -> dict[str, str]:
    """Every chart of the page as inline SVG (svgchart: string building, no plotting
    library), keyed counts, rejects, scores:COLUMN, embeddings:COLUMN, balance,
    embedding_map."""
    charts = {}
    per_class = report["counts"]["per_class"]
    names = list(per_class)
    charts["counts"] = _counts_chart(per_class)
    charts["rejects"] = _rejects_chart(report["rejects_by_reason"])
    for column in report["scores"]:
        limit = next((t for t in report.get("thresholds") or [] if t["column"] == column), None)
        chart = _score_histograms(rows, column, names, limit)
        if chart:
            charts[f"scores:{column}"] = chart
    for column, spread in report["embedding_spread"].items():
        classes = [n for n in names if n in spread]
        if classes:
            charts[f"embeddings:{column}"] = _spread_chart(column, spread, classes)
    if "balance" in report:
        charts["balance"] = _balance_chart(report["balance"])
    feedback = feedback_block(report)
    if feedback is not None and feedback.get("rounds"):
        charts["feedback"] = _feedback_chart(feedback)
    emap = report.get("embedding_map")
    if emap and emap["points"]:
        charts["embedding_map"] = _embedding_map_chart(emap, names)
    return charts


def score_counts(
    rows: pd.DataFrame, column: str
) -> tuple[list[float], dict[tuple[str, str], list[int]]] | None:
    """`column`'s finite values binned: HIST_BINS shared bins over their whole range (as
    np.histogram: half-open, the last closed), counts per (class, status); None when none."""
    if column not in rows:
        return None
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    classes, class_names = pd.factorize(rows["class_name"].astype(str))
    statuses, status_names = pd.factorize(rows["status"].astype(str))
    classes, statuses, values = classes[finite], statuses[finite], values[finite]
    edges = np.linspace(values.min(), values.max() + 1e-9, HIST_BINS + 1)
    # np.histogram's bins: each half-open, the last one closed
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, HIST_BINS - 1)
    flat = (classes * len(status_names) + statuses) * HIST_BINS + bins
    table = np.bincount(flat, minlength=len(class_names) * len(status_names) * HIST_BINS)
    table = table.reshape(len(class_names), len(status_names), HIST_BINS)
    counts = {
        (str(c), str(st)): table[i, j].tolist()
        for i, c in enumerate(class_names)
        for j, st in enumerate(status_names)
    }
    return edges.tolist(), counts


def threshold_text(limit: dict[str, Any]) -> str:
    """A check's threshold in words: `clip_score: rejects below 0.25`."""
    side = "below" if limit["keep"] == "above" else "above"
    if limit.get("absolute") is not None:
        text = f"{limit['check']}: rejects {side} {fmt_set(limit['absolute'])}"
    else:
        cuts = ", ".join(
            f"{c} {fmt_num(v)}" for c, v in (limit.get("per_class") or {}).items() if v is not None
        )
        worst = "lowest" if limit["keep"] == "above" else "highest"
        text = (
            f"{limit['check']}: rejects the {worst} {fmt_pct(limit['quantile'])} of each "
            f"class, per-class cut {cuts or 'none'}"
        )
    if limit.get("max_phash_distance") is not None:
        text += f", or a pHash distance of at most {limit['max_phash_distance']}"
    return text


def _panel_thresholds(limit: dict[str, Any] | None, names: list[str]) -> list[float | None]:
    if limit is None:
        return [None] * len(names)
    if limit.get("absolute") is not None:
        return [float(limit["absolute"])] * len(names)
    cuts = limit.get("per_class") or {}
    return [cuts.get(n) for n in names]


def _score_histograms(
    rows: pd.DataFrame, column: str, names: list[str], limit: dict[str, Any] | None = None
) -> str | None:
    """One panel per class of `column`'s values, accepted and rejected overlaid on bins
    shared by all classes (binned counts: the size of the chart does not grow with rows);
    `limit` (a check's threshold, `check_thresholds`) drawn as a dashed line in each panel."""
    binned = score_counts(rows, column)
    if binned is None:
        return None
    edges, counts = binned
    empty = [0] * HIST_BINS
    panels = [
        (
            name,
            [
                (status, counts.get((name, status), empty), colour)
                for status, colour in (
                    ("accepted", svgchart.ACCEPTED),
                    ("rejected", svgchart.REJECTED),
                )
            ],
        )
        for name in names
    ]
    return svgchart.histogram_grid(
        f"score distributions per class: {column}",
        column,
        edges,
        panels,
        thresholds=_panel_thresholds(limit, names),
        threshold_label=f"{limit['check']} threshold" if limit else "threshold",
    )


def _embedding_map_chart(emap: dict[str, Any], order: list[str] | None = None) -> str:
    """The PCA map: colour per class (legend in label order), marker per status; at most
    MAP_DRAWN points of each synthetic status drawn (a fixed subsample, said under it)."""
    pts = emap["points"]
    present = {str(p[2]) for p in pts}
    classes = [c for c in order or [] if c in present] + sorted(present - set(order or []))
    palette = svgchart.TAB10 if len(classes) <= 10 else svgchart.TAB20
    colours = {c: palette[i % len(palette)] for i, c in enumerate(classes)}
    drawn: list[tuple[float, float, str, str]] = []
    notes = []
    by_status: dict[str, list[tuple[float, float, str, str]]] = {}
    for x, y, cls, status in pts:
        by_status.setdefault(status, []).append((float(x), float(y), str(cls), status))
    for status in ("reference", "accepted", "rejected"):
        mine = by_status.get(status, [])
        if len(mine) > MAP_DRAWN and status != "reference":
            keep = np.sort(np.random.default_rng(0).choice(len(mine), MAP_DRAWN, replace=False))
            notes.append(f"{MAP_DRAWN} of {len(mine)} {status}")
            mine = [mine[i] for i in keep.tolist()]
        drawn += mine
    ev = emap["explained_variance"]
    return svgchart.scatter(
        "embedding map (PCA)",
        drawn,
        colours,
        [
            ("reference", "reference (real)", "dot"),
            ("accepted", "accepted", "circle"),
            ("rejected", "rejected", "cross"),
        ],
        f"PC1 ({ev[0]:.0%})" if ev else "PC1",
        f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2",
        note=f"Points drawn: {', '.join(notes)} (a fixed subsample)." if notes else "",
    )


class _Raw(str):
    """Table cell content that is already HTML (a sparkline SVG): not escaped."""


def _table(headers: list[str], rows: list[list[Any]], name: str = "") -> str:
    """A table; `name` becomes its `data-table` attribute (tests and readers find it)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    attr = f" data-table='{html.escape(name)}'" if name else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else fmt_num(value)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
h1{margin-bottom:0} section{margin:2em 0} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} th{background:#f2f2f2}
.ok{color:#2e7d32;font-weight:bold} .bad{color:#c62828;font-weight:bold}
.strip{margin:4px 0;display:flex;align-items:center;gap:8px}
.strip img{image-rendering:pixelated;border:1px solid #ddd}
.label{display:inline-block;width:9em;font-size:13px}
.card{border:1px solid #ccc;border-radius:6px;padding:0.5em 1em;margin:0.5em 0;max-width:60em}
svg.spark{vertical-align:middle} .up{color:#2e7d32} .down{color:#c62828}
.chart{overflow-x:auto;margin:0.5em 0} svg.chart{display:block}
.verdict{border-width:2px;font-size:15px} .verdict .gate{font-size:20px;margin:0.3em 0}
nav#contents ol{columns:2;max-width:40em;font-size:14px}
.thumbs{display:flex;flex-wrap:wrap;gap:6px} figure.thumb{margin:0;text-align:center}
figure.thumb figcaption{font-size:10px;color:#555;max-width:9em;overflow-wrap:anywhere}
td{font-variant-numeric:tabular-nums} table[data-table='per-class'] td{white-space:nowrap}
"""

LOADED_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def _strip(label: str, cls: str, images: list[bytes], note: str = "") -> str:
    uri = _png_data_uri(images)
    if uri is None:
        return f"<div class='strip'><span class='label'>{label}</span>none</div>"
    small = f" <small>{html.escape(note)}</small>" if note else ""
    return (
        f"<div class='strip'><span class='label'>{label}</span>"
        f"<img alt='{label} {html.escape(cls)}' src='{uri}'>{small}</div>"
    )


# The per-class table: set sizes, then every gateable metric but the pairwise distances.
METRIC_COLUMNS = (
    "n_synthetic",
    "n_reference",
    *(n for n in METRIC_NAMES if not n.startswith("mean_pairwise")),
)


SPARK_W, SPARK_H = 84, 20


def sparkline_bars(
    values: list[float],
    bins: int = 12,
    lo: float | None = None,
    hi: float | None = None,
    title: str = "",
) -> str:
    """An inline SVG histogram of `values` (no axes, no text): a distribution at a glance."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    head = (
        f"<svg class='spark' xmlns='http://www.w3.org/2000/svg' width='{SPARK_W}' "
        f"height='{SPARK_H}' viewBox='0 0 {SPARK_W} {SPARK_H}' role='img'>"
        f"<title>{html.escape(title)}</title>"
    )
    if v.size == 0:
        return head + "</svg>"
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    counts, _ = np.histogram(v, bins=bins, range=(lo, hi if hi > lo else lo + 1e-9))
    width = SPARK_W / bins
    top = max(int(counts.max()), 1)
    bars = "".join(
        f"<rect x='{i * width + 0.5:.1f}' y='{SPARK_H - SPARK_H * n / top:.1f}' "
        f"width='{width - 1:.1f}' height='{SPARK_H * n / top:.1f}' fill='#4f81bd'/>"
        for i, n in enumerate(counts.tolist())
        if n
    )
    return head + bars + "</svg>"


def sparkline_line(values: list[float | None], title: str = "") -> str:
    """An inline SVG line of a series (missing points break it), its last point marked."""
    head = (
        f"<svg class='spark' xmlns='http://www.w3.org/2000/svg' width='{SPARK_W}' "
        f"height='{SPARK_H}' viewBox='0 0 {SPARK_W} {SPARK_H}' role='img'>"
        f"<title>{html.escape(title)}</title>"
    )
    known = [float(x) for x in values if x is not None and np.isfinite(x)]
    if not known:
        return head + "</svg>"
    lo, hi = min(known), max(known)
    span = hi - lo or 1.0
    step = (SPARK_W - 4) / max(len(values) - 1, 1)
    points: list[list[str]] = [[]]
    last = None
    for i, x in enumerate(values):
        if x is None or not np.isfinite(x):
            points.append([])
            continue
        y = SPARK_H - 2 - (SPARK_H - 4) * (float(x) - lo) / span
        last = (2 + i * step, y)
        points[-1].append(f"{last[0]:.1f},{y:.1f}")
    lines = "".join(
        f"<polyline points='{' '.join(p)}' fill='none' stroke='#4f81bd' stroke-width='1.5'/>"
        for p in points
        if len(p) > 1
    )
    dot = f"<circle cx='{last[0]:.1f}' cy='{last[1]:.1f}' r='2' fill='#c0504d'/>" if last else ""
    return head + lines + dot + "</svg>"


def _score_sparks(rows: pd.DataFrame, column: str | None) -> dict[str, str]:
    """Per class: a sparkline of the accepted samples' `column` values (common bins)."""
    if column is None or column not in rows or not len(rows):
        return {}
    values = rows[column].dropna()
    if values.empty:
        return {}
    lo, hi = float(values.min()), float(values.max())
    out = {}
    for cls, group in rows[rows["status"] == "accepted"].groupby("class_name"):
        v = group[column].dropna().tolist()
        out[str(cls)] = sparkline_bars(v, lo=lo, hi=hi, title=f"{column} of accepted {cls}")
    return out


def _spark_column(manifest: Manifest, rows: pd.DataFrame) -> str | None:
    """The score the per-class sparklines show: the first CLIP score, else any scalar."""
    scalars = [c.name for c in manifest.score_columns if not c.is_vector and c.name in rows]
    return next((c for c in scalars if c.endswith("_score")), scalars[0] if scalars else None)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return fmt_num(value)


def _thumbs(
    label: str, cls: str, images: list[bytes], keys: list[str] | None, note: str = ""
) -> str:
    """A row of thumbnails, each captioned with its sample key (one strip image when the
    keys are not known)."""
    if not images:
        return f"<div class='strip'><span class='label'>{label}</span>none</div>"
    if not keys or len(keys) != len(images):
        return _strip(label, cls, images, note)
    small = f"<small>{html.escape(note)}</small>" if note else ""
    figures = "".join(
        f"<figure class='thumb'><img alt='{html.escape(key)}' src='{_png_data_uri([image])}'>"
        f"<figcaption>{html.escape(key)}</figcaption></figure>"
        for image, key in zip(images, keys, strict=True)
    )
    return (
        f"<div class='strip'><span class='label'>{label}</span>"
        f"<div class='thumbs'>{figures}</div>{small}</div>"
    )


def _bound(row: dict[str, Any]) -> str:
    show = fmt_pct if row["kind"] == "fraction" else fmt_set
    lo, hi = row["min"], row["max"]
    if lo is not None and hi is not None:
        return f"{show(lo)} … {show(hi)}"
    if lo is not None:
        return f"≥ {show(lo)}"
    if hi is not None:
        return f"≤ {show(hi)}"
    return "–"


def _verdict_card(report: dict[str, Any]) -> list[str]:
    """Gate, accepted / attempted and accept rate, each bound with its value, build time."""
    v = report["verdict"]
    gate = v["gate"]
    word = {"pass": "PASS", "fail": "FAIL"}.get(str(gate), "NOT RUN")
    css = "ok" if gate == "pass" else "bad"
    timing = report["timing"]
    idle = timing.get("idle_seconds") or 0
    runs = timing.get("runs") or []
    time_note = (
        f" in {len(runs)} runs ({fmt_duration(idle)} idle between them, not counted)"
        if len(runs) > 1
        else ""
    )
    surplus = report["rejects"]["surplus"]
    rows = []
    per_class: dict[str, list[dict[str, Any]]] = {}
    for b in v["bounds"]:
        if b["scope"].startswith("class:"):
            per_class.setdefault(b["name"], []).append(b)
            continue
        shown = fmt_pct(b["value"]) if b["kind"] == "fraction" else fmt_num(b["value"])
        within = {True: "yes", False: "NO", None: "–"}[b["within"]]
        rows.append(
            [b["name"], b["scope"], shown if b["value"] is not None else "–", _bound(b), within]
        )
    for name, scopes in per_class.items():  # one row per gate: its worst class
        pick = min if scopes[0]["min"] is not None else max
        worst = pick(scopes, key=lambda b: b["value"])
        bad = sum(b["within"] is False for b in scopes)
        rows.append(
            [
                name,
                f"{len(scopes)} classes, worst {worst['scope'].removeprefix('class:')}",
                fmt_num(worst["value"]),
                _bound(worst),
                f"NO ({bad} of {len(scopes)})" if bad else "yes",
            ]
        )
    parts = [
        "<div class='card verdict' id='verdict'>",
        f"<p class='gate'>Gate: <span class='{css}' data-gate='{html.escape(str(gate))}'>"
        f"{word}</span> <small>(manifest status {html.escape(str(v['status']))})</small></p>",
        f"<p><b class='accepted'>{fmt_int(v['accepted'])}</b> accepted of "
        f"<b class='attempted'>{fmt_int(v['attempted'])}</b> attempted: accept rate "
        f"<b class='accept-rate'>{fmt_pct(v['accept_rate'])}</b>"
        + (
            f"; {fmt_int(surplus)} more passed every check but were set aside as "
            f"<code>surplus</code> (passed checks: {fmt_pct(v['passed_checks_rate'])})"
            if surplus
            else ""
        )
        + f". Build time <b class='build-time'>{fmt_duration(v['active_seconds'])}</b>"
        f"{time_note}.</p>",
        _table(["figure", "scope", "value", "bound", "within"], rows, "bounds"),
        "</div>",
    ]
    return parts


def _contents(sections: list[tuple[str, str]]) -> list[str]:
    items = "".join(
        f"<li><a href='#{sid}'>{html.escape(title)}</a></li>" for sid, title in sections
    )
    return [f"<nav id='contents'><h2>Contents</h2><ol>{items}</ol></nav>"]


def _metrics_section(data: ReportData, report: dict[str, Any]) -> list[str]:
    """The distribution metrics against the reference, overall and per class (with a
    sparkline of a score per class), or how to add a reference set."""
    metrics = report.get("metrics")
    parts = ["<section id='metrics'><h2>Distribution metrics against the reference</h2>"]
    if metrics:
        parts.append(
            f"<p>Accepted samples' embeddings (<code>{html.escape(metrics['embedding_column'])}"
            f"</code>) against {fmt_int(metrics['reference_images'])} reference images from "
            f"<code>{html.escape(str(metrics['reference']))}</code>; k = {metrics['k']}. "
            "Higher precision, recall, density and coverage are better; lower Fréchet distance "
            "and KID are better; Vendi is the effective number of distinct samples.</p>"
        )
        spark_column = _spark_column(data.manifest, data.rows)
        sparks = _score_sparks(data.rows, spark_column)
        head = ["class", f"{spark_column or 'score'} (accepted)", *METRIC_COLUMNS]
        body = [["overall", "", *(_cell(metrics["overall"].get(c)) for c in METRIC_COLUMNS)]]
        body += [
            [cls, _Raw(sparks.get(cls, "")), *(_cell(values.get(c)) for c in METRIC_COLUMNS)]
            for cls, values in metrics["per_class"].items()
        ]
        parts.append(_table(head, body, "per-class"))
    else:
        parts.append(
            "<p>No reference set: add a <code>reference:</code> block to the recipe "
            "or run <code>synthgen report DIR --reference SRC</code>.</p>"
        )
    parts.append("</section>")
    return parts


def _map_section(charts: dict[str, str]) -> list[str]:
    parts = ["<section id='embedding-map'><h2>Embedding map</h2>"]
    if "embedding_map" in charts:
        parts.append(
            "<p>PCA of the image embeddings of every synthetic sample and the reference "
            "images; colour is the class.</p>"
        )
        parts.append(f"<div class='chart'>{charts['embedding_map']}</div>")
    else:
        parts.append("<p>No stored embeddings (list the <code>clip_embedding</code> scorer).</p>")
    parts.append("</section>")
    return parts


def _near_copy_card(copies: dict[str, Any]) -> list[str]:
    """The near-copy verdicts as `synthgen validate --reference` prints them, the flagged
    samples in a table."""
    rule = copies["rule"]
    how = f"similarity ≥ {fmt_set(rule['min_similarity'])}"
    if rule.get("max_phash_distance") is not None:
        how += f" or pHash distance ≤ {rule['max_phash_distance']}"
    verdict = (
        f"<span class='bad'>{fmt_int(copies['count'])} near cop"
        f"{'y' if copies['count'] == 1 else 'ies'}</span>"
        if copies["count"]
        else "<span class='ok'>no near copy</span>"
    )
    parts = [
        f"<div class='card' id='near-copies'><p><b>Near copies</b> ({how}, as "
        f"<code>synthgen validate --reference</code> judges them): {verdict} among "
        f"{fmt_int(copies['checked'])} accepted samples.</p>"
    ]
    if copies["count"]:
        parts.append(
            _table(
                ["key", "class", "nearest reference", "similarity", "pHash distance"],
                [
                    [
                        r["key"],
                        r["class_name"],
                        r["nearest_ref"],
                        f"{r['similarity']:.4f}",
                        r["phash_distance"],
                    ]
                    for r in copies["samples"]
                ],
                "near-copies",
            )
        )
    parts.append("</div>")
    return parts


def _pair_thumbs(data: ReportData, reference: ReferenceSet, pair: dict[str, Any]) -> str:
    """One nearest pair: the synthetic sample (when its image was read) and its nearest
    real image, captioned with their keys, the similarity and hash distance beside."""
    synthetic = (data.sample_images or {}).get(pair["key"], b"")
    real = reference.thumbnails[pair["index"]]
    images = [synthetic, real] if synthetic else [real]
    keys = [pair["key"], str(pair["nearest_ref"])] if synthetic else [str(pair["nearest_ref"])]
    flag = " NEAR COPY" if pair.get("near_copy") else ""
    note = f"similarity {pair['similarity']:.4f}, phash distance {pair['phash_distance']}{flag}"
    return _thumbs(html.escape(pair["class_name"]), pair["class_name"], images, keys, note)


def _nearest_section(data: ReportData, report: dict[str, Any]) -> list[str]:
    parts = ["<section id='nearest'><h2>Nearest synthetic ↔ real pairs</h2>"]
    pairs = report.get("nearest_pairs") or []
    copies = report.get("near_copies")
    if copies is not None:
        parts += _near_copy_card(copies)
    if pairs and data.reference is not None:
        parts.append(
            "<p>Per class, the accepted samples most similar to a reference image "
            "(memorization review): synthetic left, its nearest real image right.</p>"
        )
        parts += [_pair_thumbs(data, data.reference, pair) for pair in pairs]
    else:
        parts.append("<p>No reference set.</p>")
    parts.append("</section>")
    return parts


def _reference_sections(
    data: ReportData, report: dict[str, Any], charts: dict[str, str]
) -> list[str]:
    """Metrics per class, the embedding map, nearest synthetic<->real pairs with the
    near-copy verdicts."""
    return [
        *_metrics_section(data, report),
        *_map_section(charts),
        *_nearest_section(data, report),
    ]


def _timing_section(report: dict[str, Any]) -> list[str]:
    timing = report["timing"]
    rows = [
        ["started", str(timing.get("created_at"))],
        ["finished", str(timing.get("finished_at"))],
        ["build time (active)", fmt_duration(timing.get("active_seconds"))],
        ["wall time", fmt_duration(timing.get("wall_seconds"))],
        ["idle between runs", fmt_duration(timing.get("idle_seconds"))],
        ["samples per second", fmt_num(timing.get("samples_per_second"))],
        ["accepted per second", fmt_num(timing.get("accepted_per_second"))],
    ]
    runs = timing.get("runs") or []
    parts = [
        "<section id='timing'><h2>Build timing</h2>",
        "<p>Build time counts each run from its start to its last finished shard (the last "
        "run to the manifest): on a resumed build the time between an interrupted run and "
        "its <code>--resume</code> is left out. Rates are over the build time.</p>",
        _table(["figure", "value"], rows, "timing"),
    ]
    if len(runs) > 1:
        parts.append(
            _table(
                ["run", "started", "last work", "time"],
                [
                    [i + 1, r["started_at"], r["ended_at"], fmt_duration(r["seconds"])]
                    for i, r in enumerate(runs)
                ],
                "runs",
            )
        )
    parts.append("</section>")
    return parts


def _failure_section(failed: dict[str, Any]) -> list[str]:
    """Failed samples: counts per reason and class, the first keys with their messages."""
    if not failed.get("count"):
        return []
    return [
        "<section id='failures'><h2>Failed samples</h2>",
        f"<p>{fmt_int(failed['count'])} sample(s) raised an error while being generated, "
        "scored or encoded: no image, a <code>failed</code> row each.</p>",
        _table(["reason", "samples"], [[k, fmt_int(v)] for k, v in failed["by_reason"].items()]),
        _table(["class", "samples"], [[k, fmt_int(v)] for k, v in failed["by_class"].items()]),
        _table(
            ["key", "class", "reason", "message"],
            [[f["key"], f["class_name"], f["reason"], f["message"]] for f in failed["first"]],
        ),
        "</section>",
    ]


def _usage_card(report: dict[str, Any]) -> list[str]:
    """Licence and usage statement, and whether images carry content credentials."""
    usage = report.get("usage") or {}
    licence = usage.get("license")
    source = {"model_card": "the model card", "recipe": "the recipe"}.get(
        str(usage.get("license_source")), "unknown"
    )
    cred = report.get("content_credentials") or {}
    signed = (
        f"signed C2PA content credentials ({html.escape(str(cred.get('alg')))})"
        if cred.get("c2pa")
        else "no C2PA content credentials"
    )
    return [
        "<div class='card' id='usage'>",
        f"<p><b>Model licence:</b> <code>{html.escape(str(licence))}</code> (from {source})"
        if licence
        else "<p><b>Model licence:</b> not stated (no model card licence, no "
        "<code>model.license</code>)",
        f"<br><b>Usage:</b> {html.escape(str(usage['usage']))}"
        if usage.get("usage")
        else "<br><b>Usage:</b> not stated (the recipe has no <code>usage:</code>)",
        f"<br><b>Accepted images carry:</b> {signed}.</p>",
        "</div>",
    ]


def _delta(change: dict[str, Any], unit: str = "", digits: int = 4) -> str:
    p, c, d = change.get("previous"), change.get("current"), change.get("delta")
    if p is None and c is None:
        return "–"
    text = f"{'–' if p is None else fmt_num(p)}{unit} → {'–' if c is None else fmt_num(c)}{unit}"
    if d is not None:
        text += f" ({'+' if d >= 0 else ''}{fmt_num(d)})"
    return text


def _trend_card(report: dict[str, Any]) -> list[str]:
    trend = report.get("trend")
    if not trend:
        return []
    prev = trend["previous"]
    regressions = trend["regressions"]
    held = trend.get("held_back") or []
    rate = trend["accept_rate"]
    verdict = (
        f"<span class='bad'>{len(regressions)} regression(s)</span>: "
        + html.escape(
            "; ".join(
                f"{r['scope']} {r['figure']} {_delta({**r, 'delta': None})}" for r in regressions
            )
        )
        if regressions
        else "<span class='ok'>no regression</span>"
    )
    if held:
        verdict += (
            f"; {len(held)} change(s) past tolerance on too few samples, not flagged: "
            + html.escape(
                "; ".join(
                    f"{h['scope']} {h['figure']} {_delta({**h, 'delta': None})} "
                    f"(n = {h['n_previous']} → {h['n_current']}, at least {h['minimum']} needed)"
                    for h in held
                )
            )
        )
    history = sparkline_line(trend["history"]["overall"], "accept rate (%) per build")
    return [
        "<div class='card' id='trend-summary'>",
        f"<p><b>Against the previous build</b> <code>{html.escape(Path(prev['output']).name)}"
        f"</code> ({html.escape(str(prev.get('finished_at')))}"
        f"{'' if trend['same_recipe'] else ', another recipe'}): "
        f"accepted {html.escape(_delta(trend['counts']['accepted']))}, accept rate "
        f"{html.escape(_delta(rate, ' %'))} {history}<br>{verdict}.</p>",
        "</div>",
    ]


def _trend_section(report: dict[str, Any]) -> list[str]:
    """Per class: accept rate and each metric against the previous build, regressions marked."""
    trend = report.get("trend")
    if not trend:
        return []
    names = sorted({m for v in trend["per_class"].values() for m in v["metrics"]})

    def mark(change: dict[str, Any], unit: str = "") -> str:
        return ("REGRESSED " if change["regressed"] else "") + _delta(change, unit)

    rows = []
    for cls, v in trend["per_class"].items():
        cells: list[Any] = [
            cls,
            _Raw(
                sparkline_line(trend["history"]["accept_rate"].get(cls, []), f"{cls} accept rate")
            ),
            mark(v["accept_rate"], " %"),
        ]
        for name in names:
            m = v["metrics"].get(name)
            cells.append("–" if m is None else mark(m))
        rows.append(cells)
    overall = [
        "overall",
        _Raw(sparkline_line(trend["history"]["overall"], "accept rate")),
        mark(trend["accept_rate"], " %"),
    ]
    overall += ["–" if (m := trend["metrics"].get(n)) is None else mark(m) for n in names]
    rules = trend["rules"]
    minimum = rules.get("min_attempts", rules["min_class_attempts"])
    return [
        "<section id='trend'><h2>Trend against the previous build</h2>",
        f"<p>Regression rules: accept rate down more than {rules['accept_rate_drop_points']} "
        f"points, overall or in a class, when both builds attempted at least {minimum} "
        "samples there; a metric moving the wrong way past its tolerance (0.05 for precision, "
        "recall, density, coverage; 10&nbsp;% for Fréchet distance, KID, Vendi, pairwise "
        "distance, never less than an absolute floor) when both builds measured it on at "
        f"least {rules.get('min_metric_samples', minimum)} accepted samples; a gated metric "
        "crossing its gate.</p>",
        _table(["class", "accept rate history", "accept rate", *names], [overall, *rows], "trend"),
        "</section>",
    ]


def _balance_table(balance: dict[str, Any]) -> str:
    return _table(
        ["class", "before (real)", "target", "after (real + synthetic)"],
        [
            [c, fmt_int(n), fmt_int(balance["target"].get(c)), fmt_int(balance["after"].get(c))]
            for c, n in balance["before"].items()
        ],
        "balance",
    )


def _rounds_table(rounds: list[dict[str, Any]]) -> list[str]:
    """The balancing rounds, a row per round and class and the round's total."""
    body = []
    for r in rounds:
        for cls, v in r["per_class"].items():
            body.append([r["round"], cls, *(fmt_int(v[k]) for k in ROUND_FIELDS)])
        body.append([r["round"], "all", *(fmt_int(r["total"][k]) for k in ROUND_FIELDS)])
    return [
        "<h3 id='balance-rounds'>Balancing rounds</h3><p>Each round plans new samples for "
        "the classes still short: <i>requested</i> planned, <i>made</i> attempted, "
        "<i>accepted</i> kept; <i>quality rejects</i> failed a check; <i>surplus</i> passed "
        "every check but the class had reached its target (not a quality reject).</p>",
        _table(
            ["round", "class", *(k.replace("_", " ") for k in ROUND_FIELDS)],
            body,
            "rounds",
        ),
    ]


STOP_REASONS = {
    "budget": "the synthetic budget (max_synthetic) was spent",
    "plateau": "the held-out error stopped improving (patience rounds within min_delta)",
    "targets": "every class reached its target",
    "max_rounds": "the round limit (max_rounds) was reached",
    "given_up": "every class still short was given up on, accepting too few of its top-ups "
    "(min_accept_rate)",
}


def _in_order(names: set[str], order: list[str]) -> list[str]:
    rank = {c: i for i, c in enumerate(order)}
    return sorted(names, key=lambda c: (rank.get(c, len(rank)), c))


def _feedback_rounds_table(feedback: dict[str, Any], order: list[str]) -> str:
    """A row per round: its probe's held-out metrics, the samples it planned per class for
    the next round, and why."""
    rounds = feedback.get("rounds") or []
    classes = _in_order({c for r in rounds for c in r.get("allocation") or {}}, order)
    metrics = _probe_columns([r["metrics"] for r in rounds])
    body = [
        [
            r["round"],
            fmt_int(r["synthetic_so_far"]),
            *(_fmt(r["metrics"].get(k)) for k, _ in metrics),
            *(fmt_int((r.get("allocation") or {}).get(c, 0)) for c in classes),
            r.get("reason") or "",
        ]
        for r in rounds
    ]
    headers = ["round", "synthetic so far", *(name for _, name in metrics)]
    return _table([*headers, *(f"next: {c}" for c in classes), "reason"], body, "feedback")


# ProbeMetrics fields the tables show, when the records have them
PROBE_COLUMNS = (
    ("error", "held-out error"),
    ("macro_soft_error", "soft error (mean 1 - p(true class))"),
    ("macro_f1", "macro-F1"),
    ("minority_recall", "minority recall"),
)


def _probe_columns(probes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, name) for k, name in PROBE_COLUMNS if any(k in p for p in probes)]


def _feedback_probes_table(feedback: dict[str, Any], order: list[str]) -> str:
    """Held-out error per class (and per cluster of the real images, worst first) of the
    real-only probe, the oversampling baseline and the last round's probe."""
    rounds = feedback.get("rounds") or []
    probes = [("real only", feedback.get("real_only")), ("baseline", feedback.get("baseline"))]
    if rounds:
        probes.append((f"round {rounds[-1]['round']}", rounds[-1]["metrics"]))
    shown = [(name, p) for name, p in probes if isinstance(p, dict)]
    classes = _in_order({c for _, p in shown for c in p.get("per_class_error") or {}}, order)
    body = []
    for c in classes:
        row: list[Any] = [c]
        for _, p in shown:
            clusters = sorted((p.get("per_cluster_error") or {}).get(c) or [], reverse=True)
            cell = _fmt((p.get("per_class_error") or {}).get(c))
            row.append(
                cell + (f" ({' / '.join(fmt_num(e) for e in clusters)})" if clusters else "")
            )
        body.append(row)
    return _table(
        ["class", *(f"{name}: error (per cluster)" for name, _ in shown)], body, "feedback-classes"
    )


def _feedback_references(feedback: dict[str, Any]) -> str:
    probes = [
        (name, p) for key, name, _ in CURVE_REFERENCES if isinstance(p := feedback.get(key), dict)
    ]
    columns = _probe_columns([p for _, p in probes])
    rows = [[name, *(_fmt(p.get(k)) for k, _ in columns)] for name, p in probes]
    return _table(["probe", *(n for _, n in columns)], rows, "feedback-references")


def _feedback_section(
    feedback: dict[str, Any], charts: dict[str, str], order: list[str]
) -> list[str]:
    """Closed-loop balancing: the learning curve, the rounds' allocations and reasons, the
    reference probes, the per-class errors and why it stopped."""
    stop = str(feedback.get("stop") or "")
    parts = [
        "<h3 id='balance-feedback'>Closed-loop balancing</h3><p>Each round a probe (a small "
        "classifier on the CLIP image embeddings) is trained on the real images and the "
        "synthetic ones accepted so far, and measured by cross-validation on real images it "
        "did not train on; the next round's samples go where it errs. The <i>oversampling "
        "baseline</i> is the same probe on the real images alone, the minority classes "
        "repeated and augmented: synthetic images earn their place by beating it.</p>",
    ]
    if "feedback" in charts:
        parts.append(f"<div class='chart'>{charts['feedback']}</div>")
    parts += [
        "<p>Per round: its probe's held-out metrics, the samples it planned for each class "
        "in the next round (<i>next: class</i>) and why.</p>",
        _feedback_rounds_table(feedback, order),
        "<p>The reference probes, trained on no synthetic image:</p>",
        _feedback_references(feedback),
        *(
            [f"<p>Oversampling baseline: {html.escape(str(feedback['baseline_method']))}</p>"]
            if feedback.get("baseline_method")
            else []
        ),
        "<p>Held-out error per class, and in brackets per cluster of the class's real "
        "images (k-means of their embeddings), worst first:</p>",
        _feedback_probes_table(feedback, order),
    ]
    if stop:
        why = STOP_REASONS.get(stop)
        parts.append(
            f"<p data-stop='{html.escape(stop)}'>Stopped: <b>{html.escape(stop)}</b>"
            + (f" ({html.escape(why)})" if why else "")
            + ".</p>"
        )
    return parts + _given_up(feedback)


def _given_up(feedback: dict[str, Any]) -> list[str]:
    """The classes a round left out (shown to accept under `min_accept_rate`), each with the
    round that first did."""
    first: dict[str, int] = {}
    for r in feedback.get("rounds") or []:
        for c in r.get("given_up") or []:
            first.setdefault(c, r["round"])
    if not first:
        return []
    named = ", ".join(
        f"{html.escape(c)} (left out of round {n}'s plan and after)" for c, n in first.items()
    )
    return [
        f"<p data-given-up='{html.escape(' '.join(first))}'>Given up on, accepting too "
        "few of their top-ups (<code>balance.min_accept_rate</code>; each round's reason "
        f"gives the counts; the other classes went on): "
        f"{named}.</p>"
    ]


def _balance_section(report: dict[str, Any], charts: dict[str, str]) -> list[str]:
    if "balance" not in charts and not report.get("balance_rounds"):
        return []
    parts = ["<section id='balance'><h2>Class histogram before and after balancing</h2>"]
    if "balance" in charts:
        parts.append(f"<div class='chart'>{charts['balance']}</div>")
    bal = report.get("balance") or {}
    if bal:
        parts.append(_balance_table(bal))
    rounds = report.get("balance_rounds") or []
    if rounds:
        parts += _rounds_table(rounds)
    feedback = feedback_block(report)
    if feedback is not None:
        parts += _feedback_section(feedback, charts, report.get("class_order") or [])
    parts.append("</section>")
    return parts


def _expectations_section(report: dict[str, Any]) -> list[str]:
    exp = report["expectations"] or {}
    table = report.get("expectations_table") or []
    passed = sum(r["pass"] for r in table)
    rows: list[list[Any]] = [
        [
            r["dataset"],
            _Raw(
                f"{html.escape(r['expectation'])} "
                f"<small><code>{html.escape(r['type'])}</code></small>"
            ),
            r["column"],
            r["bound"],
            r["observed"],
            _Raw("<span class='ok'>pass</span>" if r["pass"] else "<span class='bad'>FAIL</span>"),
        ]
        for r in table
    ]
    rows += [
        ["corpus", "check", "", "", f, _Raw("<span class='bad'>FAIL</span>")]
        for f in exp.get("failures", [])
    ]
    return [
        "<section id='expectations'><h2>Expectations (great_expectations)</h2>",
        f"<p>Overall: <span class='{'ok' if exp.get('success') else 'bad'}'>"
        f"{'passed' if exp.get('success') else 'FAILED'}</span>: "
        f"{fmt_int(passed)} of {fmt_int(len(table))} expectations passed.</p>",
        _table(
            ["dataset", "expectation", "column", "bound", "observed", "pass"], rows, "expectations"
        ),
        "</section>",
    ]


def _scores_section(report: dict[str, Any], charts: dict[str, str]) -> list[str]:
    parts = ["<section id='scores'><h2>Score distributions per class</h2>"]
    limits = report.get("thresholds") or []
    for key, svg in charts.items():
        if key[:7] != "scores:":
            continue
        column = key[7:]
        mine = [t for t in limits if t["column"] == column]
        for t in mine:
            parts.append(
                f"<p class='threshold' data-column='{html.escape(column)}'>Threshold: "
                f"{html.escape(threshold_text(t))} (dashed line).</p>"
            )
        parts.append(f"<div class='chart'>{svg}</div>")
    parts.append("</section>")
    return parts


def _summary_section(report: dict[str, Any]) -> list[str]:
    """Status and counts, the licence and usage card, the trend card."""
    counts = report["counts"]
    status_class = "ok" if report["status"] == "complete" else "bad"
    return [
        "<section id='summary'><h2>Summary</h2>",
        f"<p>Status: <span class='{status_class}'>{html.escape(str(report['status']))}"
        f"</span>. {fmt_int(counts['planned'])} planned, {fmt_int(counts['accepted'])} "
        f"accepted, {fmt_int(report['rejects']['quality'])} rejected by a check"
        + (
            f", {fmt_int(report['rejects']['surplus'])} surplus"
            if report["rejects"]["surplus"]
            else ""
        )
        + f", {fmt_int(counts.get('failed', 0))} failed. Recipe hash "
        f"<code>{report['recipe_hash'][:16]}</code>.</p>",
        *_usage_card(report),
        *_trend_card(report),
        "</section>",
    ]


def _counts_section(report: dict[str, Any], charts: dict[str, str]) -> list[str]:
    return [
        "<section id='counts'><h2>Planned vs accepted per class</h2>",
        f"<div class='chart'>{charts['counts']}</div>",
        _table(
            ["class", "planned", "accepted"],
            [
                [c, fmt_int(v["planned"]), fmt_int(v["accepted"])]
                for c, v in report["counts"]["per_class"].items()
            ],
            "per-class",
        ),
        "</section>",
    ]


def _embeddings_section(report: dict[str, Any], charts: dict[str, str]) -> list[str]:
    """Per embedding column: its spread chart and the table of distances per class."""
    if not report["embedding_spread"]:
        return []
    parts = [
        "<section id='embeddings'><h2>Embedding spread per class</h2>",
        "<p>Mean cosine distance of each sample's image embedding to its class centroid "
        "(all synthetic samples of the class), accepted vs rejected.</p>",
    ]
    for column, spread in report["embedding_spread"].items():
        if f"embeddings:{column}" in charts:
            parts.append(f"<div class='chart'>{charts[f'embeddings:{column}']}</div>")
        parts.append(
            _table(
                ["class", "accepted", "n", "rejected", "n"],
                [
                    [
                        c,
                        _fmt(v["accepted"]),
                        fmt_int(v["n_accepted"]),
                        _fmt(v["rejected"]),
                        fmt_int(v["n_rejected"]),
                    ]
                    for c in report["counts"]["per_class"]
                    if (v := spread.get(c)) is not None
                ],
                "per-class",
            )
        )
    parts.append("</section>")
    return parts


def _rejects_section(data: ReportData, report: dict[str, Any], charts: dict[str, str]) -> list[str]:
    """Quality rejects by reason (surplus said apart): chart, table, a few images each."""
    split = report["rejects"]
    parts = [
        "<section id='rejects'><h2>Rejects by reason</h2>",
        f"<p>{fmt_int(split['quality'])} sample(s) failed a check (quality rejects)"
        + (
            f"; {fmt_int(split['surplus'])} more passed every check but were not needed "
            "(<code>surplus</code>: their class had reached its target), not counted here"
            if split["surplus"]
            else ""
        )
        + ".</p>",
        f"<div class='chart'>{charts['rejects']}</div>",
        _table(
            ["reason", "samples"],
            [[k, fmt_int(v)] for k, v in split["quality_by_reason"].items()],
        ),
    ]
    for reason in split["quality_by_reason"]:
        images = (data.reason_images or {}).get(reason, [])
        keys = (data.reason_keys or {}).get(reason)
        parts.append(_thumbs(html.escape(reason), reason, images, keys))
    parts.append("</section>")
    return parts


REFERENCE_TITLES = {
    "metrics": "Distribution metrics",
    "embedding-map": "Embedding map",
    "nearest": "Nearest pairs and near copies",
}


def _reference_entries(
    data: ReportData, report: dict[str, Any], charts: dict[str, str]
) -> list[tuple[str, str, list[str]]]:
    """The reference sections as (id, title, html) contents entries."""
    ref = _reference_sections(data, report, charts)
    split_at = [i for i, p in enumerate(ref) if p.startswith("<section id=")]
    out = []
    for i, start in enumerate(split_at):
        stop = split_at[i + 1] if i + 1 < len(split_at) else len(ref)
        sid = ref[start].split("'")[1]
        out.append((sid, REFERENCE_TITLES.get(sid, sid), ref[start:stop]))
    return out


def _samples_section(data: ReportData, report: dict[str, Any]) -> list[str]:
    """Per class, accepted and rejected thumbnails (the rejects' reasons beside)."""
    parts = ["<section id='samples'><h2>Samples per class</h2>"]
    for cls in report["counts"]["per_class"]:
        parts.append(f"<h3>{html.escape(cls)}</h3>")
        parts.append(
            _thumbs(
                "accepted",
                cls,
                data.accepted_images.get(cls, []),
                (data.accepted_keys or {}).get(cls),
            )
        )
        rejected = data.rejected_images.get(cls, [])
        reasons = ", ".join(sorted({reason for _, reason in rejected}))
        parts.append(
            _thumbs(
                "rejected",
                cls,
                [image for image, _ in rejected],
                (data.rejected_keys or {}).get(cls),
                reasons,
            )
        )
    parts.append("</section>")
    return parts


def _provenance_section(report: dict[str, Any]) -> list[str]:
    flat = [
        [k, json.dumps(v, default=str) if isinstance(v, dict | list) else v]
        for k, v in report["provenance"].items()
    ]
    flat.insert(0, ["recipe hash", report["recipe_hash"]])
    return [
        "<section id='provenance'><h2>Provenance</h2>",
        _table(["field", "value"], flat),
        "</section>",
    ]


def _sections(data: ReportData, report: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """The page's sections in order, as (id, title, html); empty ones left out."""
    charts = _charts(report, data.rows)
    body: list[tuple[str, str, list[str]]] = [
        ("summary", "Summary", _summary_section(report)),
        ("counts", "Planned vs accepted per class", _counts_section(report, charts)),
        ("balance", "Balancing", _balance_section(report, charts)),
        ("scores", "Score distributions per class", _scores_section(report, charts)),
        ("embeddings", "Embedding spread per class", _embeddings_section(report, charts)),
        ("failures", "Failed samples", _failure_section(report.get("failures") or {})),
        ("rejects", "Rejects by reason", _rejects_section(data, report, charts)),
        *_reference_entries(data, report, charts),
        ("trend", "Trend against the previous build", _trend_section(report)),
        ("timing", "Build timing", _timing_section(report)),
        ("samples", "Samples per class", _samples_section(data, report)),
        ("expectations", "Expectations", _expectations_section(report)),
        ("provenance", "Provenance", _provenance_section(report)),
    ]
    return [entry for entry in body if entry[2]]


def render_html(data: ReportData, report: dict[str, Any]) -> str:
    """The report page from loaded data and its report.json content; reads no file."""
    body = _sections(data, report)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>synthgen report: {html.escape(report['recipe_name'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Data-quality report: {html.escape(report['recipe_name'])}</h1>",
        *_verdict_card(report),
        *_contents([(sid, title) for sid, title, _ in body]),
    ]
    for _, _, section in body:
        parts += section
    parts.append(f"<script>{LOADED_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(
    out: Path,
    manifest: Manifest | None = None,
    reference: tuple[Path, str] | None = None,
    previous: Path | None = None,
) -> tuple[Path, Path]:
    """Write report.json and report.html beside the manifest (read from `out` unless given);
    `reference` (an embedded set's cache file and its source) adds or replaces the metrics;
    `previous` (the previously published build) adds the trend against its report; without
    it, a report rewritten (`synthgen report`) keeps comparing with the build its earlier
    report.json compared with, while that build's report is still there."""
    data = load_report_data(out, manifest, reference)
    report = report_json(data)
    with_trend(report, data.manifest, previous or earlier_previous(out))
    page = render_html(data, report)
    json_path, html_path = out / REPORT_JSON, out / REPORT_HTML
    write_bytes_atomic(json_path, json.dumps(report, indent=2, default=str).encode())
    write_bytes_atomic(html_path, page.encode("utf-8"))
    return json_path, html_path
