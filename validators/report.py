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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.schemas.manifest import REPORT_HTML, REPORT_JSON, Manifest, shard_files
from synthgen.schemas.recipe import METRIC_NAMES
from synthgen.schemas.records import (
    REJECT_IMAGE_FIELD,
    read_build_constants,
    rejected_image_bytes,
)
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators import svgchart
from synthgen.validators.corpus import IMAGE_EXTS, empty_rows, read_manifest
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
    by_reason: dict[str, list[bytes]] = {}
    for shard in shards:
        table = pq.read_table(out / shard_files(shard)[1])
        picked = table.select(
            ["key", "class_name", "status", "reject_reason", REJECT_IMAGE_FIELD.name]
        )
        for row in picked.to_pylist():
            bucket = rejected.setdefault(row["class_name"], [])
            image = rejected_image_bytes(row[REJECT_IMAGE_FIELD.name])
            if row["status"] == "rejected" and image:
                if len(bucket) < GRID_PER_CLASS:
                    bucket.append((image, str(row["reject_reason"])))
                mine = by_reason.setdefault(str(row["reject_reason"]), [])
                if len(mine) < PER_REASON:
                    mine.append(image)
        tables.append(table.drop_columns([REJECT_IMAGE_FIELD.name]))
    rows = pa.concat_tables(tables).to_pandas() if tables else empty_rows(manifest.score_columns)
    constants = read_build_constants(tables[0].schema) if tables else {}
    classes = list(manifest.counts.planned_per_class)
    ref, location = _reference(out, manifest, reference)
    column = _embedding_column(manifest)
    wanted = {p["key"]: b"" for p in nearest_pairs(rows, ref, column)} if ref and column else {}
    accepted = _accepted_images(out, shards, classes, GRID_PER_CLASS, wanted)
    return ReportData(
        out, manifest, rows, accepted, rejected, ref, location, by_reason, wanted, constants
    )


def _embedding_column(manifest: Manifest) -> str | None:
    return next(
        (c.name for c in manifest.score_columns if c.is_vector and c.scorer == "clip_embedding"),
        None,
    )


def nearest_pairs(
    rows: pd.DataFrame,
    ref: ReferenceSet | None,
    column: str | None,
    per_class: int = PAIRS_PER_CLASS,
) -> list[dict[str, Any]]:
    """Per class, the accepted samples closest to a reference image (memorization review),
    most similar first: key, class_name, nearest_ref, index, similarity, phash_distance."""
    if ref is None or column is None or column not in rows or not len(rows):
        return []
    mine = rows[(rows["status"] == "accepted") & rows[column].map(lambda v: v is not None)]
    if mine.empty:
        return []
    found = nearest(list(mine[column]), list(mine["phash"]), ref)
    pairs = [
        {
            "key": key,
            "class_name": cls,
            "nearest_ref": f.ref,
            "index": f.index,
            "similarity": f.similarity,
            "phash_distance": f.phash_distance,
        }
        for key, cls, f in zip(mine["key"], mine["class_name"], found, strict=True)
    ]
    out: list[dict[str, Any]] = []
    for cls in sorted({p["class_name"] for p in pairs}):
        ranked = sorted(
            (p for p in pairs if p["class_name"] == cls), key=lambda p: (-p["similarity"], p["key"])
        )
        out += ranked[:per_class]
    return out


def _accepted_images(
    out: Path,
    shards: list[int],
    classes: list[str],
    per_class: int,
    keyed: dict[str, bytes] | None = None,
) -> dict[str, list[bytes]]:
    """Up to `per_class` accepted images per class; the images of the keys in `keyed` are
    filled in there too (the nearest-pair review needs those samples)."""
    found: dict[str, list[bytes]] = {}
    for shard in shards:
        full = classes and all(len(found.get(c, [])) >= per_class for c in classes)
        if full and not (keyed and any(not v for v in keyed.values())):
            break
        tar = out / shard_files(shard)[0]
        for sample in iter_tar_samples(tar, extensions={*IMAGE_EXTS, "json"}):
            parts = sample.members
            image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
            if image is None or "json" not in parts:
                continue
            if keyed is not None and sample.key in keyed:
                keyed[sample.key] = image
            bucket = found.setdefault(json.loads(parts["json"])["class_name"], [])
            if len(bucket) < per_class:
                bucket.append(image)
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
        present = group[group[column].map(lambda v: v is not None)]
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

    accepted = data.rows[
        (data.rows["status"] == "accepted") & data.rows[column].map(lambda v: v is not None)
    ]
    synthetic = {
        str(cls): np.stack([np.asarray(v, dtype=np.float32) for v in group[column]])
        for cls, group in accepted.groupby("class_name")
    }
    names = _class_names(data)
    real = {names[c]: v for c, v in data.reference.by_class().items() if c in names}
    computed = corpus_metrics(synthetic, real, DEFAULT_K)
    return {
        "metrics_version": 1,
        "reference": given,
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
    mine = rows[rows[column].map(lambda v: v is not None)]
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


def _timing(manifest: Manifest) -> dict[str, Any]:
    from datetime import datetime

    def parse(value: str) -> datetime | None:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None

    start, end = parse(manifest.created_at), parse(manifest.finished_at)
    seconds = (end - start).total_seconds() if start and end else None
    attempted = manifest.counts.attempted
    return {
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "wall_seconds": seconds,
        "samples_per_second": attempted / seconds if seconds else None,
        "accepted_per_second": manifest.counts.accepted / seconds if seconds else None,
    }


def report_json(data: ReportData) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (the content of report.json)."""
    manifest, rows = data.manifest, data.rows
    counts = manifest.counts
    accepted = rows[rows["status"] == "accepted"].groupby("class_name").size().to_dict()
    rejected = rows[rows["status"] == "rejected"]
    imaged = rows[rows["status"] != "failed"] if len(rows) else rows  # failed: no image
    first = {**(data.constants or {}), **(imaged.iloc[0].to_dict() if len(imaged) else {})}
    scalars = [c.name for c in manifest.score_columns if not c.is_vector]
    vectors = [c.name for c in manifest.score_columns if c.is_vector]
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "output": str(data.out),
        "status": manifest.status,
        "recipe_name": manifest.recipe_name,
        "recipe_hash": manifest.recipe_hash,
        "counts": {
            "planned": counts.planned,
            "accepted": counts.accepted,
            "rejected": counts.rejected,
            "failed": counts.failed,
            "per_class": {
                c: {"planned": n, "accepted": int(accepted.get(c, 0))}
                for c, n in counts.planned_per_class.items()
            },
        },
        "rejects_by_reason": {
            str(k): int(v) for k, v in rejected["reject_reason"].value_counts().items()
        },
        "rejects_by_class_and_reason": {
            f"{c}/{r}": int(n)
            for (c, r), n in rejected.groupby(["class_name", "reject_reason"]).size().items()
        },
        "score_columns": [c.model_dump(mode="json") for c in manifest.score_columns],
        "scores": _score_stats(rows, scalars),
        "embedding_spread": {name: embedding_spread(rows, name) for name in vectors},
        "expectations": manifest.validation.model_dump(mode="json") if manifest.validation else {},
        "provenance": {
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
        },
    }
    if manifest.balance is not None:
        report["balance"] = manifest.balance.model_dump(mode="json")
    report["usage"] = _usage(manifest)
    report["content_credentials"] = _content_credentials(manifest)
    column = _embedding_column(manifest)
    report["metrics"] = _metrics(data)
    report["nearest_pairs"] = nearest_pairs(rows, data.reference, column)
    report["embedding_map"] = embedding_map(data)
    report["timing"] = _timing(manifest)
    report["failures"] = failures(rows)
    return report


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
    """A horizontal strip of thumbnails as a PNG data URI."""
    from PIL import Image

    decoded = [_thumbnail(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
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


def _charts(report: dict[str, Any], rows: pd.DataFrame) -> dict[str, str]:
    """Every chart of the page as inline SVG (svgchart: string building, no plotting
    library), keyed counts, rejects, scores:COLUMN, embeddings:COLUMN, balance,
    embedding_map."""
    charts = {}
    per_class = report["counts"]["per_class"]
    names = list(per_class)
    charts["counts"] = svgchart.grouped_bars(
        "planned vs accepted per class",
        names,
        [
            ("planned", [per_class[n]["planned"] for n in names], svgchart.PLANNED),
            ("accepted", [per_class[n]["accepted"] for n in names], svgchart.ACCEPTED),
        ],
        ylabel=["samples"],
    )
    reasons = report["rejects_by_reason"]
    charts["rejects"] = svgchart.hbars(
        "rejects by reason",
        list(reasons),
        list(reasons.values()),
        svgchart.REJECTED,
        "rejected samples",
        empty="no rejects",
    )
    for column in report["scores"]:
        chart = _score_histograms(rows, column, names)
        if chart:
            charts[f"scores:{column}"] = chart
    for column, spread in report["embedding_spread"].items():
        classes = [n for n in names if n in spread]
        if not classes:
            continue
        charts[f"embeddings:{column}"] = svgchart.grouped_bars(
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
    if "balance" in report:
        bal = report["balance"]
        classes = list(bal["before"])
        charts["balance"] = svgchart.grouped_bars(
            "class histogram before and after balancing",
            classes,
            [
                ("before (real)", [bal["before"][c] for c in classes], svgchart.TAB10[0]),
                (
                    "after (real + synthetic)",
                    [bal["after"].get(c) for c in classes],
                    svgchart.TAB10[1],
                ),
            ],
            ylabel=["images"],
        )
    emap = report.get("embedding_map")
    if emap and emap["points"]:
        charts["embedding_map"] = _embedding_map_chart(emap)
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


def _score_histograms(rows: pd.DataFrame, column: str, names: list[str]) -> str | None:
    """One panel per class of `column`'s values, accepted and rejected overlaid on bins
    shared by all classes (binned counts: the size of the chart does not grow with rows)."""
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
        f"score distributions per class: {column}", column, edges, panels
    )


def _embedding_map_chart(emap: dict[str, Any]) -> str:
    """The PCA map: colour per class, marker per status; at most MAP_DRAWN points of each
    synthetic status drawn (a fixed subsample, said under the chart)."""
    pts = emap["points"]
    classes = sorted({str(p[2]) for p in pts})
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


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


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
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _reference_sections(
    data: ReportData, report: dict[str, Any], charts: dict[str, str]
) -> list[str]:
    """Metrics per class, the embedding map, nearest synthetic<->real pairs, timing."""
    parts: list[str] = []
    metrics = report.get("metrics")
    parts.append("<section id='metrics'><h2>Distribution metrics against the reference</h2>")
    if metrics:
        parts.append(
            f"<p>Accepted samples' embeddings (<code>{html.escape(metrics['embedding_column'])}"
            f"</code>) against {metrics['reference_images']} reference images from "
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
        parts.append(_table(head, body))
    else:
        parts.append(
            "<p>No reference set: add a <code>reference:</code> block to the recipe "
            "or run <code>synthgen report DIR --reference SRC</code>.</p>"
        )
    parts.append("</section>")
    parts.append("<section id='embedding-map'><h2>Embedding map</h2>")
    if "embedding_map" in charts:
        parts.append(
            "<p>PCA of the image embeddings of every synthetic sample and the reference "
            "images; colour is the class.</p>"
        )
        parts.append(f"<div class='chart'>{charts['embedding_map']}</div>")
    else:
        parts.append("<p>No stored embeddings (list the <code>clip_embedding</code> scorer).</p>")
    parts.append("</section>")
    parts.append("<section id='nearest'><h2>Nearest synthetic ↔ real pairs</h2>")
    pairs = report.get("nearest_pairs") or []
    if pairs and data.reference is not None:
        parts.append(
            "<p>Per class, the accepted samples most similar to a reference image "
            "(memorization review): synthetic left, its nearest real image right.</p>"
        )
        for pair in pairs:
            synthetic = (data.sample_images or {}).get(pair["key"], b"")
            real = data.reference.thumbnails[pair["index"]]
            images = [synthetic, real] if synthetic else [real]
            note = (
                f"{pair['key']} ↔ {pair['nearest_ref']}: similarity {pair['similarity']:.4f}, "
                f"phash distance {pair['phash_distance']}"
            )
            parts.append(_strip(html.escape(pair["class_name"]), pair["class_name"], images, note))
    else:
        parts.append("<p>No reference set.</p>")
    parts.append("</section>")
    timing = report["timing"]
    parts.append("<section id='timing'><h2>Build timing</h2>")
    parts.append(
        _table(
            ["figure", "value"],
            [[k, _cell(v) if not isinstance(v, str) else v] for k, v in timing.items()],
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
        f"<p>{failed['count']} sample(s) raised an error while being generated, scored or "
        "encoded: no image, a <code>failed</code> row each.</p>",
        _table(["reason", "samples"], [[k, v] for k, v in failed["by_reason"].items()]),
        _table(["class", "samples"], [[k, v] for k, v in failed["by_class"].items()]),
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
    fmt = f"{{:.{digits}g}}"
    text = (
        f"{'–' if p is None else fmt.format(p)}{unit} → {'–' if c is None else fmt.format(c)}{unit}"
    )
    if d is not None:
        text += f" ({'+' if d >= 0 else ''}{fmt.format(d)})"
    return text


def _trend_card(report: dict[str, Any]) -> list[str]:
    trend = report.get("trend")
    if not trend:
        return []
    prev = trend["previous"]
    regressions = trend["regressions"]
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
    history = sparkline_line(trend["history"]["overall"], "accept rate (%) per build")
    return [
        "<div class='card' id='trend-summary'>",
        f"<p><b>Against the previous build</b> <code>{html.escape(Path(prev['output']).name)}"
        f"</code> ({html.escape(str(prev.get('finished_at')))}"
        f"{'' if trend['same_recipe'] else ', another recipe'}): "
        f"accepted {html.escape(_delta(trend['counts']['accepted']))}, accept rate "
        f"{html.escape(_delta(rate, '%'))} {history}<br>{verdict}.</p>",
        "</div>",
    ]


def _trend_section(report: dict[str, Any]) -> list[str]:
    """Per class: accept rate and each metric against the previous build, regressions marked."""
    trend = report.get("trend")
    if not trend:
        return []
    names = sorted({m for v in trend["per_class"].values() for m in v["metrics"]})
    rows = []
    for cls, v in trend["per_class"].items():
        rate = v["accept_rate"]
        cells: list[Any] = [
            cls,
            _Raw(
                sparkline_line(trend["history"]["accept_rate"].get(cls, []), f"{cls} accept rate")
            ),
            ("REGRESSED " if rate["regressed"] else "") + _delta(rate, "%"),
        ]
        for name in names:
            m = v["metrics"].get(name)
            cells.append("–" if m is None else ("REGRESSED " if m["regressed"] else "") + _delta(m))
        rows.append(cells)
    overall = [
        "overall",
        _Raw(sparkline_line(trend["history"]["overall"], "accept rate")),
        ("REGRESSED " if trend["accept_rate"]["regressed"] else "")
        + _delta(trend["accept_rate"], "%"),
    ]
    overall += [
        "–"
        if (m := trend["metrics"].get(n)) is None
        else ("REGRESSED " if m["regressed"] else "") + _delta(m)
        for n in names
    ]
    rules = trend["rules"]
    return [
        "<section id='trend'><h2>Trend against the previous build</h2>",
        f"<p>Regression rules: accept rate down more than {rules['accept_rate_drop_points']} "
        f"points (a class: at least {rules['min_class_attempts']} samples in both builds); a "
        "metric moving the wrong way past its tolerance (0.05 for precision, recall, density, "
        "coverage; 10&nbsp;% for Fréchet distance, KID, Vendi, pairwise distance); a gated "
        "metric crossing its gate.</p>",
        _table(["class", "accept rate history", "accept rate", *names], [overall, *rows]),
        "</section>",
    ]


def render_html(data: ReportData, report: dict[str, Any]) -> str:
    """The report page from loaded data and its report.json content; reads no file."""
    charts = _charts(report, data.rows)
    counts = report["counts"]
    status_class = "ok" if report["status"] == "complete" else "bad"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>synthgen report: {html.escape(report['recipe_name'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Data-quality report: {html.escape(report['recipe_name'])}</h1>",
        "<section id='summary'><h2>Summary</h2>",
        f"<p>Status: <span class='{status_class}'>{html.escape(str(report['status']))}</span>. "
        f"{counts['planned']} planned, {counts['accepted']} accepted, "
        f"{counts['rejected']} rejected, {counts.get('failed', 0)} failed. "
        f"Recipe hash <code>{report['recipe_hash'][:16]}</code>.</p>",
        *_usage_card(report),
        *_trend_card(report),
        "</section>",
        "<section id='counts'><h2>Planned vs accepted per class</h2>",
        f"<div class='chart'>{charts['counts']}</div>",
        _table(
            ["class", "planned", "accepted"],
            [[c, v["planned"], v["accepted"]] for c, v in counts["per_class"].items()],
        ),
        "</section>",
    ]
    if "balance" in charts:
        parts += [
            "<section id='balance'><h2>Class histogram before and after balancing</h2>",
            f"<div class='chart'>{charts['balance']}</div>",
            "</section>",
        ]
    parts.append("<section id='scores'><h2>Score distributions per class</h2>")
    parts += [f"<div class='chart'>{svg}</div>" for k, svg in charts.items() if k[:7] == "scores:"]
    parts.append("</section>")
    if report["embedding_spread"]:
        parts.append("<section id='embeddings'><h2>Embedding spread per class</h2>")
        parts.append(
            "<p>Mean cosine distance of each sample's image embedding to its class centroid "
            "(all synthetic samples of the class), accepted vs rejected.</p>"
        )
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
                            v["n_accepted"],
                            _fmt(v["rejected"]),
                            v["n_rejected"],
                        ]
                        for c in counts["per_class"]
                        if (v := spread.get(c)) is not None
                    ],
                )
            )
        parts.append("</section>")
    parts += [
        *_failure_section(report.get("failures") or {}),
        "<section id='rejects'><h2>Rejects by reason</h2>",
        f"<div class='chart'>{charts['rejects']}</div>",
        _table(["reason", "samples"], [[k, v] for k, v in report["rejects_by_reason"].items()]),
    ]
    for reason in report["rejects_by_reason"]:
        images = (data.reason_images or {}).get(reason, [])
        parts.append(_strip(html.escape(reason), reason, images))
    parts += ["</section>"]
    parts += _reference_sections(data, report, charts)
    parts += _trend_section(report)
    parts += ["<section id='samples'><h2>Samples per class</h2>"]
    for cls in counts["per_class"]:
        parts.append(f"<h3>{html.escape(cls)}</h3>")
        parts.append(_strip("accepted", cls, data.accepted_images.get(cls, [])))
        rejected = data.rejected_images.get(cls, [])
        reasons = ", ".join(sorted({reason for _, reason in rejected}))
        parts.append(_strip("rejected", cls, [image for image, _ in rejected], reasons))
    parts.append("</section>")
    exp = report["expectations"] or {}
    parts += [
        "<section id='expectations'><h2>Expectations (great_expectations)</h2>",
        f"<p>Overall: <span class='{'ok' if exp.get('success') else 'bad'}'>"
        f"{'passed' if exp.get('success') else 'FAILED'}</span></p>",
        _table(
            ["dataset", "expectation", "arguments", "result", "detail"],
            [
                [
                    e["dataset"],
                    e["expectation"],
                    json.dumps(e["kwargs"], default=str),
                    "pass" if e["success"] else "FAIL",
                    e["detail"],
                ]
                for e in exp.get("expectations", [])
            ]
            + [["corpus", "check", "", "FAIL", f] for f in exp.get("failures", [])],
        ),
        "</section>",
        "<section id='provenance'><h2>Provenance</h2>",
    ]
    prov = report["provenance"]
    flat = [
        [k, json.dumps(v, default=str) if isinstance(v, dict | list) else v]
        for k, v in prov.items()
    ]
    flat.insert(0, ["recipe hash", report["recipe_hash"]])
    parts += [
        _table(["field", "value"], flat),
        "</section>",
        f"<script>{LOADED_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def write_report(
    out: Path,
    manifest: Manifest | None = None,
    reference: tuple[Path, str] | None = None,
    previous: Path | None = None,
) -> tuple[Path, Path]:
    """Write report.json and report.html beside the manifest (read from `out` unless given);
    `reference` (an embedded set's cache file and its source) adds or replaces the metrics;
    `previous` (the previously published build) adds the trend against its report."""
    data = load_report_data(out, manifest, reference)
    report = report_json(data)
    with_trend(report, data.manifest, previous)
    page = render_html(data, report)
    json_path, html_path = out / REPORT_JSON, out / REPORT_HTML
    write_bytes_atomic(json_path, json.dumps(report, indent=2, default=str).encode())
    write_bytes_atomic(html_path, page.encode("utf-8"))
    return json_path, html_path
