from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from tests.validators.test_corpus import corpus  # noqa: F401  (module fixture)

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


def test_report_json_has_every_section(corpus: Path) -> None:  # noqa: F811
    report = json.loads((corpus / "report.json").read_text())
    assert report["counts"]["planned"] == 12
    assert set(report["counts"]["per_class"]) == {"zero", "one", "two"}
    assert sum(report["rejects_by_reason"].values()) == report["counts"]["rejected"] > 0
    assert "clip_tiny_clip_score" in report["scores"]
    spread = report["embedding_spread"]["clip_tiny_clip_embedding"]
    assert set(spread) == {"zero", "one", "two"}
    assert report["expectations"]["success"] is True
    assert report["provenance"]["scheduler"] == "dpm-solver++"


def test_report_html_is_self_contained(corpus: Path) -> None:  # noqa: F811
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


def test_report_renders_in_headless_chromium(corpus: Path, tmp_path: Path) -> None:  # noqa: F811
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


def test_report_charts_have_no_overlapping_text(corpus: Path) -> None:  # noqa: F811
    """Every chart's text artists (ticks, titles, legends) measured at render time."""
    from synthgen.validators import report as report_module

    report_module.TEXT_OVERLAPS.clear()
    data = report_module.load_report_data(corpus)
    charts = report_module._charts(report_module.report_json(data), data.rows)
    assert "counts" in charts and any(k.startswith("embeddings:") for k in charts)
    assert report_module.TEXT_OVERLAPS == []
