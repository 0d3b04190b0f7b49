from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("no chromium on PATH: `make test` installs Debian's chromium")


def test_report_json_has_every_section(corpus: Path) -> None:
    report = json.loads((corpus / "report.json").read_text())
    assert report["counts"]["planned"] == 12
    assert set(report["counts"]["per_class"]) == {"zero", "one", "two"}
    assert sum(report["rejects_by_reason"].values()) == report["counts"]["rejected"] > 0
    assert "clip_tiny_clip_score" in report["scores"]
    spread = report["embedding_spread"]["clip_tiny_clip_embedding"]
    assert set(spread) == {"zero", "one", "two"}
    assert report["expectations"]["success"] is True
    assert report["provenance"]["scheduler"] == "dpm-solver++"


def test_report_html_is_self_contained(corpus: Path) -> None:
    page = (corpus / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page), "no network references"
    for section in (
        "summary",
        "counts",
        "scores",
        "embeddings",
        "rejects",
        "samples",
        "expectations",
        "provenance",
    ):
        assert f"id='{section}'" in page
    assert page.count("data:image/png;base64,") >= 3
    assert "<svg" in page


def test_report_renders_in_headless_chromium(corpus: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    url = (corpus / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run(
        [*common, "--window-size=1200,2400", f"--screenshot={shot}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    # every section rendered, and every image (grids are PNG data URIs) decoded in the browser
    for heading in (
        "Planned vs accepted per class",
        "Score distributions per class",
        "Embedding spread per class",
        "Rejects by reason",
        "Samples per class",
        "Expectations",
        "Provenance",
    ):
        assert heading in dom
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the page's load script did not run"
    assert loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= 3
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 10, "screenshot is blank"


# Loaded with a page: measures every chart text (`svg.chart text`, its bounding box after
# layout, rotation included) and writes what it finds into the body's attributes: texts that
# overlap another text of the chart, stick out of the chart (clipped), or sit on a plot area
# (`rect.frame`) without being meant to (class `inside`). Tooltips (`<title>`) do not count.
MEASURE_SCRIPT = """
window.addEventListener('load', function () {
  function shown(t) {
    var s = '';
    for (var n = t.firstChild; n; n = n.nextSibling) { if (n.nodeType === 3) s += n.nodeValue; }
    return s.trim();
  }
  function cut(a, b) {
    return Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5 &&
      Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5;
  }
  var problems = [], measured = 0;
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    var name = svg.getAttribute('aria-label') || '', box = svg.getBoundingClientRect();
    var frames = Array.prototype.map.call(svg.querySelectorAll('rect.frame'), function (f) {
      return f.getBoundingClientRect();
    });
    var texts = [];
    svg.querySelectorAll('text').forEach(function (t) {
      var s = shown(t), r = t.getBoundingClientRect();
      if (!s || r.width <= 0 || r.height <= 0) { return; }
      measured++;
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5 ||
          r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5) {
        problems.push([name, 'clipped', s, '']);
      }
      if (!t.classList.contains('inside')) {
        frames.forEach(function (f) {
          if (cut(r, f)) { problems.push([name, 'on plot', s, '']); }
        });
      }
      texts.push([s, r]);
    });
    for (var i = 0; i < texts.length; i++) {
      for (var j = i + 1; j < texts.length; j++) {
        if (cut(texts[i][1], texts[j][1])) {
          problems.push([name, 'overlap', texts[i][0], texts[j][0]]);
        }
      }
    }
  });
  document.body.setAttribute('data-chart-texts', String(measured));
  document.body.setAttribute('data-chart-problems', JSON.stringify(problems));
});
"""


def chart_text_problems(page: str, tmp_path: Path) -> tuple[int, list[list[str]]]:
    """Load `page` (HTML with inline SVG charts) in headless Chromium with MEASURE_SCRIPT:
    the number of chart texts measured and the problems found, each [chart, kind, text,
    other text]."""
    path = tmp_path / "measured.html"
    body = page.rindex("</body>") if "</body>" in page else len(page)
    path.write_text(f"{page[:body]}<script>{MEASURE_SCRIPT}</script>{page[body:]}")
    dom = subprocess.run(
        [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'measure-profile'}",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    count = re.search(r'data-chart-texts="(\d+)"', dom)
    found = re.search(r'data-chart-problems="([^"]*)"', dom)
    assert count and found, "the measuring script did not run"
    return int(count.group(1)), json.loads(html.unescape(found.group(1)))


def charts_page(charts: list[str]) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        + "".join(f"<div class='chart'>{svg}</div>" for svg in charts)
        + "</body></html>"
    )


def crowded_charts() -> list[str]:
    """Every chart kind with 30 classes (long names, markup characters), 12 long reject
    reasons, scores spread over five orders of magnitude and a 30-class embedding map."""
    from synthgen.validators import report as report_module

    names = [f"class-{i:02d}-{'long' * (i % 5)}<name>&co" for i in range(30)]
    rng = np.random.default_rng(0)
    n = 40 * len(names)
    rows = pd.DataFrame(
        {
            "class_name": np.repeat(names, 40),
            "status": np.where(rng.random(n) < 0.7, "accepted", "rejected"),
            "tiny": rng.normal(0, 1e-4, n),
            "huge": rng.normal(5e4, 2e4, n),
        }
    )
    crowded = {
        "counts": {
            "per_class": {c: {"planned": 10 + i, "accepted": i} for i, c in enumerate(names)}
        },
        "rejects_by_reason": {f"reason {i} " + "x" * (i * 5): (i + 1) ** 3 for i in range(12)},
        "scores": {"tiny": {}, "huge": {}},
        "embedding_spread": {
            "embedding_column_with_a_rather_long_name": {
                c: {"accepted": 0.01 * i, "rejected": None if i % 3 else 0.3}
                for i, c in enumerate(names)
            }
        },
        "balance": {
            "before": {c: 5 * i for i, c in enumerate(names)},
            "after": {c: 500 for c in names},
        },
        "embedding_map": {
            "method": "pca",
            "explained_variance": [0.123, 0.045],
            "points": [
                [float(x), float(y), names[i % 30], ("reference", "accepted", "rejected")[i % 3]]
                for i, (x, y) in enumerate(rng.normal(0, 50, (600, 2)).tolist())
            ],
        },
    }
    return list(report_module._charts(crowded, rows).values())


def test_report_charts_have_no_overlapping_text(corpus: Path, tmp_path: Path) -> None:
    """Every chart text of the report page, and of every chart kind crowded with classes and
    long names, measured in headless Chromium: no overlap, nothing clipped, none on a plot."""
    page = (corpus / "report.html").read_text()
    crowded = crowded_charts()
    assert len(crowded) == 7
    body = page.rindex("</body>")
    page = page[:body] + "".join(f"<div class='chart'>{s}</div>" for s in crowded) + page[body:]
    measured, problems = chart_text_problems(page, tmp_path)
    assert problems == []
    assert measured > 400, "every chart's texts were measured"
