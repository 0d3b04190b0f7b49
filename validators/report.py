"""The data-quality report: report.json and one self-contained report.html (no network)."""

from __future__ import annotations

import base64
import html
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthgen.schemas.manifest import MANIFEST_NAME, shard_files
from synthgen.validators.corpus import read_rows

GRID_PER_CLASS = 10
SECTIONS = ("summary", "counts", "scores", "rejects", "samples", "expectations", "provenance")


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


def _accepted_images(out: Path, shards: list[int], per_class: int) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for shard in shards:
        with tarfile.open(out / shard_files(shard)[0]) as tf:
            names: dict[str, dict[str, bytes]] = {}
            for m in tf:
                key, _, ext = m.name.partition(".")
                if ext in ("png", "webp", "jpg", "json"):
                    f = tf.extractfile(m)
                    names.setdefault(key, {})[ext] = f.read() if f else b""
        for parts in names.values():
            cls = json.loads(parts["json"])["class_name"]
            image = next(parts[e] for e in ("png", "webp", "jpg") if e in parts)
            bucket = found.setdefault(cls, [])
            if len(bucket) < per_class:
                bucket.append(image)
        if found and all(len(v) >= per_class for v in found.values()):
            break
    return found


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


def build_report(out: Path) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (the content of report.json)."""
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    shards = [e["shard"] for e in manifest["shards"]]
    rows = read_rows(out, shards)
    planned = manifest["counts"]["planned_per_class"]
    accepted = rows[rows["status"] == "accepted"].groupby("class_name").size().to_dict()
    rejected = rows[rows["status"] == "rejected"]
    first = rows.iloc[0].to_dict() if len(rows) else {}
    report = {
        "output": str(out),
        "status": manifest.get("status"),
        "recipe_name": manifest["recipe_name"],
        "recipe_hash": manifest["recipe_hash"],
        "counts": {
            "planned": manifest["counts"]["planned"],
            "accepted": manifest["counts"]["accepted"],
            "rejected": manifest["counts"]["rejected"],
            "per_class": {
                c: {"planned": n, "accepted": int(accepted.get(c, 0))} for c, n in planned.items()
            },
        },
        "rejects_by_reason": {
            str(k): int(v) for k, v in rejected["reject_reason"].value_counts().items()
        },
        "rejects_by_class_and_reason": {
            f"{c}/{r}": int(n)
            for (c, r), n in rejected.groupby(["class_name", "reject_reason"]).size().items()
        },
        "score_columns": manifest["score_columns"],
        "scores": _score_stats(rows, manifest["score_columns"]),
        "expectations": manifest.get("validation", {}),
        "provenance": {
            "model": manifest.get("model"),
            "pipeline_class": first.get("pipeline_class"),
            "scheduler": first.get("scheduler"),
            "steps": first.get("steps"),
            "guidance_scale": first.get("guidance_scale"),
            "resolution": f"{first.get('width')}x{first.get('height')}",
            "dtype": first.get("dtype"),
            "device": first.get("device"),
            "scorers": manifest.get("scorers"),
            "versions": manifest.get("versions"),
            "created_at": manifest.get("created_at"),
            "finished_at": manifest.get("finished_at"),
        },
    }
    if "balance" in manifest:
        report["balance"] = manifest["balance"]
    return report


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

    for column in report["score_columns"]:
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


def render_html(report: dict[str, Any], rows: pd.DataFrame, out: Path) -> str:
    charts = _charts(report, rows)
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
    for key, svg in charts.items():
        if key.startswith("scores:"):
            parts.append(f"<div class='chart'>{svg}</div>")
    parts += [
        "</section>",
        "<section id='rejects'><h2>Rejects by reason</h2>",
        charts["rejects"],
        _table(["reason", "samples"], [[k, v] for k, v in report["rejects_by_reason"].items()]),
        "</section>",
        "<section id='samples'><h2>Samples per class</h2>",
    ]
    shards = [int(s) for s in sorted(rows["shard"].unique())] if len(rows) else []
    accepted = _accepted_images(out, shards, GRID_PER_CLASS)
    rejected_rows = read_rows(out, shards, with_images=True) if len(rows) else rows
    for cls in counts["per_class"]:
        parts.append(f"<h3>{html.escape(cls)}</h3>")
        uri = _png_data_uri(accepted.get(cls, []))
        parts.append(
            "<div class='strip'><span class='label'>accepted</span>"
            + (f"<img alt='accepted {html.escape(cls)}' src='{uri}'>" if uri else "none")
            + "</div>"
        )
        rej = (
            rejected_rows[
                (rejected_rows["class_name"] == cls) & (rejected_rows["status"] == "rejected")
            ].head(GRID_PER_CLASS)
            if len(rejected_rows)
            else rejected_rows
        )
        uri = _png_data_uri([b for b in rej["rejected_image"] if b]) if len(rej) else None
        reasons = ", ".join(sorted(set(rej["reject_reason"]))) if len(rej) else ""
        parts.append(
            "<div class='strip'><span class='label'>rejected</span>"
            + (
                f"<img alt='rejected {html.escape(cls)}' src='{uri}'> "
                f"<small>{html.escape(reasons)}</small>"
                if uri
                else "none"
            )
            + "</div>"
        )
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


def write_report(out: Path) -> tuple[Path, Path]:
    """Write report.json and report.html beside the manifest."""
    from synthgen.storage.atomic import write_bytes_atomic

    report = build_report(out)
    shards = [e["shard"] for e in json.loads((out / MANIFEST_NAME).read_text())["shards"]]
    rows = read_rows(out, shards)
    page = render_html(report, rows, out)
    json_path, html_path = out / "report.json", out / "report.html"
    write_bytes_atomic(json_path, json.dumps(report, indent=2, default=str).encode())
    write_bytes_atomic(html_path, page.encode("utf-8"))
    return json_path, html_path
