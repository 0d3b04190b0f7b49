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
from synthgen.schemas.records import REJECT_IMAGE_FIELD
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators.corpus import IMAGE_EXTS, read_manifest

GRID_PER_CLASS = 10


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, loaded once."""

    out: Path
    manifest: Manifest
    rows: pd.DataFrame  # every attempted sample, image bytes dropped
    accepted_images: dict[str, list[bytes]]  # class name -> up to GRID_PER_CLASS images
    rejected_images: dict[str, list[tuple[bytes, str]]]  # class name -> (image, reason)


def load_report_data(out: Path, manifest: Manifest | None = None) -> ReportData:
    """Read the manifest (unless given), each shard's Parquet once and tars until the
    sample grids are full."""
    manifest = manifest or read_manifest(out)
    shards = manifest.shard_ids
    tables = []
    rejected: dict[str, list[tuple[bytes, str]]] = {}
    for shard in shards:
        table = pq.read_table(out / shard_files(shard)[1])
        picked = table.select(["class_name", "status", "reject_reason", REJECT_IMAGE_FIELD.name])
        for row in picked.to_pylist():
            bucket = rejected.setdefault(row["class_name"], [])
            image = row[REJECT_IMAGE_FIELD.name]
            if row["status"] == "rejected" and image and len(bucket) < GRID_PER_CLASS:
                bucket.append((image, str(row["reject_reason"])))
        tables.append(table.drop_columns([REJECT_IMAGE_FIELD.name]))
    rows = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()
    classes = list(manifest.counts.planned_per_class)
    accepted = _accepted_images(out, shards, classes, GRID_PER_CLASS)
    return ReportData(out, manifest, rows, accepted, rejected)


def _accepted_images(
    out: Path, shards: list[int], classes: list[str], per_class: int
) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for shard in shards:
        if classes and all(len(found.get(c, [])) >= per_class for c in classes):
            break
        tar = out / shard_files(shard)[0]
        for sample in iter_tar_samples(tar, extensions={*IMAGE_EXTS, "json"}):
            parts = sample.members
            image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
            if image is None or "json" not in parts:
                continue
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


def report_json(data: ReportData) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (the content of report.json)."""
    manifest, rows = data.manifest, data.rows
    counts = manifest.counts
    accepted = rows[rows["status"] == "accepted"].groupby("class_name").size().to_dict()
    rejected = rows[rows["status"] == "rejected"]
    first = rows.iloc[0].to_dict() if len(rows) else {}
    scalars = [c.name for c in manifest.score_columns if not c.is_vector]
    vectors = [c.name for c in manifest.score_columns if c.is_vector]
    report: dict[str, Any] = {
        "output": str(data.out),
        "status": manifest.status,
        "recipe_name": manifest.recipe_name,
        "recipe_hash": manifest.recipe_hash,
        "counts": {
            "planned": counts.planned,
            "accepted": counts.accepted,
            "rejected": counts.rejected,
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
    return report


# -- how it looks (report.html) ------------------------------------------------------------


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _png_data_uri(images: list[bytes], scale: int = 4) -> str | None:
    """A horizontal strip of images as a PNG data URI (nearest-neighbour upscaled)."""
    from PIL import Image

    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    if not decoded:
        return None
    h = max(im.height for im in decoded)
    strip = Image.new("RGB", (sum(im.width + 2 for im in decoded), h + 2), (255, 255, 255))
    x = 1
    for im in decoded:
        strip.paste(im, (x, 1))
        x += im.width + 2
    strip = strip.resize((strip.width * scale, strip.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _charts(report: dict[str, Any], rows: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    per_class = report["counts"]["per_class"]
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names)), 2.8))
    ax.bar(x - 0.2, [per_class[n]["planned"] for n in names], 0.4, label="planned")
    ax.bar(x + 0.2, [per_class[n]["accepted"] for n in names], 0.4, label="accepted")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("samples")
    ax.legend()
    charts["counts"] = _svg(fig)

    reasons = report["rejects_by_reason"]
    fig, ax = plt.subplots(figsize=(5, 2.5))
    if reasons:
        ax.barh(list(reasons), list(reasons.values()), color="#c0504d")
    else:
        ax.text(0.5, 0.5, "no rejects", ha="center", va="center")
    ax.set_xlabel("rejected samples")
    charts["rejects"] = _svg(fig)

    for column in report["scores"]:
        if column not in rows or rows[column].dropna().empty:
            continue
        cols = min(5, len(names))
        nrows = int(np.ceil(len(names) / cols))
        fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 1.7 * nrows), squeeze=False)
        values = rows[column].dropna()
        bins = np.linspace(values.min(), values.max() + 1e-9, 20)
        for i, name in enumerate(names):
            ax = axes[i // cols][i % cols]
            mine = rows[rows["class_name"] == name]
            for status, color in (("accepted", "#4f81bd"), ("rejected", "#c0504d")):
                v = mine.loc[mine["status"] == status, column].dropna()
                if len(v):
                    ax.hist(v, bins=bins, color=color, alpha=0.7, label=status)
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=6)
        for j in range(len(names), nrows * cols):
            axes[j // cols][j % cols].axis("off")
        axes[0][0].legend(fontsize=6)
        fig.suptitle(column, fontsize=9)
        charts[f"scores:{column}"] = _svg(fig)

    for column, spread in report["embedding_spread"].items():
        classes = [n for n in names if n in spread]
        if not classes:
            continue
        x = np.arange(len(classes))
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(classes)), 2.8))
        for offset, status, color in ((-0.2, "accepted", "#4f81bd"), (0.2, "rejected", "#c0504d")):
            ax.bar(
                x + offset,
                [spread[c][status] or 0.0 for c in classes],
                0.4,
                color=color,
                label=status,
            )
        ax.set_xticks(x, classes, rotation=45, ha="right")
        ax.set_ylabel("mean cosine distance\nto class centroid")
        ax.set_title(column, fontsize=9)
        ax.legend()
        charts[f"embeddings:{column}"] = _svg(fig)

    if "balance" in report:
        bal = report["balance"]
        classes = list(bal["before"])
        x = np.arange(len(classes))
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(classes)), 2.8))
        ax.bar(x - 0.2, [bal["before"][c] for c in classes], 0.4, label="before (real)")
        ax.bar(x + 0.2, [bal["after"][c] for c in classes], 0.4, label="after (real + synthetic)")
        ax.set_xticks(x, classes, rotation=45, ha="right")
        ax.legend()
        charts["balance"] = _svg(fig)
    return charts


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
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
        f"{counts['rejected']} rejected. "
        f"Recipe hash <code>{report['recipe_hash'][:16]}</code>.</p>",
        "</section>",
        "<section id='counts'><h2>Planned vs accepted per class</h2>",
        charts["counts"],
        _table(
            ["class", "planned", "accepted"],
            [[c, v["planned"], v["accepted"]] for c, v in counts["per_class"].items()],
        ),
        "</section>",
    ]
    if "balance" in charts:
        parts += [
            "<section id='balance'><h2>Class histogram before and after balancing</h2>",
            charts["balance"],
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
        "<section id='rejects'><h2>Rejects by reason</h2>",
        charts["rejects"],
        _table(["reason", "samples"], [[k, v] for k, v in report["rejects_by_reason"].items()]),
        "</section>",
        "<section id='samples'><h2>Samples per class</h2>",
    ]
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


def write_report(out: Path, manifest: Manifest | None = None) -> tuple[Path, Path]:
    """Write report.json and report.html beside the manifest (read from `out` unless given)."""
    data = load_report_data(out, manifest)
    report = report_json(data)
    page = render_html(data, report)
    json_path, html_path = out / REPORT_JSON, out / REPORT_HTML
    write_bytes_atomic(json_path, json.dumps(report, indent=2, default=str).encode())
    write_bytes_atomic(html_path, page.encode("utf-8"))
    return json_path, html_path
