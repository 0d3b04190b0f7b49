"""The report against the previously published build (trend, regressions), sparklines,
licence and usage in the summary, and charts whose texts never overlap."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from synthgen.pipelines.build import run_build
from synthgen.storage.cache import CACHE_ENV
from synthgen.validators import nearest, svgchart
from synthgen.validators import report as report_module
from synthgen.validators.report import sparkline_bars, sparkline_line
from synthgen.validators.trend import build_trend, previous_build
from tests.conftest import SPLIT_THRESHOLD, tiny_recipe_dict
from tests.validators.test_reference_cache import reference_folder
from tests.validators.test_report import (
    CHROMIUM_FLAGS,
    _chromium,
    chart_text_problems,
    charts_page,
)

USAGE = "research on digit classifiers only; not for redistribution"


@dataclass(frozen=True)
class Published:
    builds: list[Path]
    reference_embedded: list[int]  # builds whose reference set ran through CLIP


@pytest.fixture(scope="module")
def published(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """Two scheduled builds into one publish root, measured against one reference folder
    (shared embedding cache in a temporary folder): the second rejects about half."""
    root = tmp_path_factory.mktemp("published")
    reference = reference_folder(root / "reference")
    outs, embedded = [], []
    original = nearest.embed_reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root / "cache"))
        for i, threshold in enumerate((None, {"absolute": SPLIT_THRESHOLD})):

            def counted(*args: Any, _i: int = i, **kwargs: Any) -> nearest.ReferenceSet:
                embedded.append(_i)
                return original(*args, **kwargs)

            mp.setattr(nearest, "embed_reference", counted)
            data = tiny_recipe_dict(model_dir, count_per_class=3)
            data["checks"] = {"clip_score": threshold, "exact_duplicate": False}
            data["model"] = {**data["model"], "license": "apache-2.0"}
            data["scoring"] = {
                **data["scoring"],
                "scorers": [{"name": "clip"}, {"name": "clip_embedding"}],
            }
            data["reference"] = {"source": str(reference)}
            data["usage"] = USAGE
            outs.append(run_build(data, None, publish_root=root, show_progress=False).output)
    return Published(outs, embedded)


def test_second_build_reuses_the_shared_reference_embedding(published: Published) -> None:
    assert published.reference_embedded == [0]  # the second build ran no model over it
    first, second = (json.loads((b / "manifest.json").read_text()) for b in published.builds)
    cache = first["metrics"]["reference_cache"]
    assert cache == second["metrics"]["reference_cache"]
    assert (published.builds[0] / cache).read_bytes() == (published.builds[1] / cache).read_bytes()


def test_second_build_reports_its_trend_against_the_first(published: Published) -> None:
    first, second = published.builds
    assert json.loads((first / "report.json").read_text())["trend"] is None  # nothing before
    assert previous_build(second) is None  # once swapped in, `latest` is this build
    report = json.loads((second / "report.json").read_text())
    assert report["report_version"] == 3
    trend = report["trend"]
    assert trend["trend_version"] == 1 and trend["previous"]["output"] == first.name
    assert trend["counts"]["planned"] == {"previous": 9.0, "current": 9.0, "delta": 0.0}
    rate = trend["accept_rate"]
    assert rate["previous"] == 100.0 and rate["current"] < 95.0 and not rate["regressed"]
    # past tolerance, but 9 samples a build are too few to call it a regression
    held = {"scope": "overall", "figure": "accept_rate", "n_previous": 9, "minimum": 20}
    assert held.items() <= trend["held_back"][0].items() and trend["regressions"] == []
    assert set(trend["per_class"]) == {"zero", "one", "two"}
    # a class with fewer than 10 attempts in either build is never flagged on its own
    assert not any(v["accept_rate"]["regressed"] for v in trend["per_class"].values())
    assert trend["history"]["overall"] == [100.0, rate["current"]]
    page = (second / "report.html").read_text()
    assert "id='trend-summary'" in page and "id='trend'" in page and "too few samples" in page
    assert page.count("<svg class='spark'") >= 7  # accept-rate lines, score distributions
    assert set(trend["metrics"]) >= {"precision", "coverage", "frechet_distance"}
    assert set(trend["per_class"]["zero"]["metrics"]) >= {"precision", "coverage"}


def test_licence_and_usage_in_summary_and_json(published: Published) -> None:
    report = json.loads((published.builds[1] / "report.json").read_text())
    assert report["usage"] == {"license": "apache-2.0", "license_source": "recipe", "usage": USAGE}
    assert report["content_credentials"] == {"c2pa": False}
    page = (published.builds[1] / "report.html").read_text()
    summary = page[page.index("id='summary'") : page.index("id='counts'")]
    assert "apache-2.0" in summary and USAGE in summary


def test_trend_report_renders_in_headless_chromium(published: Published, tmp_path: Path) -> None:
    url = (published.builds[1] / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Trend against the previous build" in dom and "Model licence" in dom
    assert re.search(r'data-images-loaded="(\d+)/\1"', dom)


def _report(accepted: int, rejected: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "recipe_hash": "h",
        "counts": {
            "planned": 40,
            "accepted": accepted,
            "rejected": rejected,
            "failed": 0,
            "per_class": {
                "a": {"planned": 20, "accepted": accepted // 2},
                "b": {"planned": 20, "accepted": accepted - accepted // 2},
            },
        },
        "rejects_by_class_and_reason": {
            "a/clip_score": rejected // 2,
            "b/clip_score": rejected - rejected // 2,
        },
        "metrics": metrics,
    }


def test_regression_rules() -> None:
    before = _report(
        36,
        4,
        {"overall": {"precision": 0.8, "frechet_distance": 10.0, "coverage": 0.6}, "per_class": {}},
    )
    same = build_trend(before, before, Path("/p"))
    assert same["regressions"] == [] and same["accept_rate"]["delta"] == 0.0
    # better on every figure: nothing flagged
    better = _report(
        40,
        0,
        {"overall": {"precision": 0.9, "frechet_distance": 5.0, "coverage": 0.7}, "per_class": {}},
    )
    assert build_trend(better, before, Path("/p"))["regressions"] == []
    # within tolerance: precision -0.04, Fréchet +9 %, accept rate -5 points
    near = _report(
        34,
        6,
        {
            "overall": {"precision": 0.76, "frechet_distance": 10.9, "coverage": 0.6},
            "per_class": {},
        },
    )
    assert build_trend(near, before, Path("/p"))["regressions"] == []
    # past tolerance
    worse = _report(
        30,
        10,
        {"overall": {"precision": 0.7, "frechet_distance": 11.5, "coverage": 0.6}, "per_class": {}},
    )
    flagged = {
        (r["scope"], r["figure"]) for r in build_trend(worse, before, Path("/p"))["regressions"]
    }
    assert flagged == {
        ("overall", "accept_rate"),
        ("overall", "precision"),
        ("overall", "frechet_distance"),
        ("class:a", "accept_rate"),
        ("class:b", "accept_rate"),
    }
    # a gated metric crossing its bound is flagged even within tolerance
    gated = _report(
        36,
        4,
        {
            "overall": {"precision": 0.8, "frechet_distance": 10.0, "coverage": 0.58},
            "per_class": {},
        },
    )
    trend = build_trend(gated, before, Path("/p"), {"coverage": {"min": 0.59}})
    assert [(r["figure"], r["current"]) for r in trend["regressions"]] == [("coverage", 0.58)]


def test_sparklines_are_inline_svg() -> None:
    bars = sparkline_bars([0.1, 0.2, 0.2, 0.9], title="x<y")
    assert bars.startswith("<svg class='spark'") and bars.count("<rect") == 3
    assert "x&lt;y" in bars and "http" not in bars.replace("http://www.w3.org/2000/svg", "")
    line = sparkline_line([1.0, None, 2.0, 3.0])
    assert line.count("<polyline") == 1 and "<circle" in line  # a gap breaks the line
    assert sparkline_line([]).endswith("</svg>")


def test_overlap_check_finds_planted_overlaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Chromium text check catches overlapping, clipped and plot-covering texts: planted
    in a hand-written chart, and in real charts laid out as if every text had no width."""
    planted = (
        "<svg class='chart' aria-label='planted' xmlns='http://www.w3.org/2000/svg' "
        "width='300' height='100' font-size='11'>"
        "<rect class='frame' x='150' y='10' width='100' height='60' fill='none'/>"
        "<text x='10' y='30'>first label</text><text x='14' y='33'>second label</text>"
        "<text x='10' y='60'><title>a tooltip, never drawn</title>alone</text>"
        "<text x='270' y='92'>clipped on the right</text>"
        "<g class='legend'><text x='160' y='40'>legend on the bars</text></g>"
        "<text x='170' y='60' class='inside'>meant inside</text>"
        "</svg>"
    )
    monkeypatch.setattr(svgchart, "text_width", lambda text, size: 0.0)
    names = [f"class-{i:02d}-long-name" for i in range(20)]
    squeezed = svgchart.grouped_bars("squeezed", names, [("n", list(range(20)), "#000")])
    grid = svgchart.histogram_grid(
        "grid",
        "a column",
        [0.4848 + 0.000542 * i for i in range(20)],
        [(c, [("accepted", [1] * 19, "#000")]) for c in names[:5]],
    )
    measured, problems = chart_text_problems(charts_page([planted, squeezed, grid]), tmp_path)
    assert measured > 50
    found = {tuple(p) for p in problems}
    assert ("planted", "overlap", "first label", "second label") in found
    assert ("planted", "clipped", "clipped on the right", "") in found
    assert ("planted", "on plot", "legend on the bars", "") in found
    assert not any("alone" in p or "meant inside" in p for p in found)
    assert any(
        c == "squeezed" and k == "overlap" and a.startswith("class-") and b.startswith("class-")
        for c, k, a, b in found
    )
    assert any(c == "grid" and k == "overlap" for c, k, _, _ in found), "edge tick labels"


def test_report_charts_have_no_overlapping_text(published: Published, tmp_path: Path) -> None:
    """Every chart text of a real report page, and of charts with many long class names,
    measured in headless Chromium."""
    page = (published.builds[1] / "report.html").read_text()
    data = report_module.load_report_data(published.builds[1])
    many = {
        f"class-{i:02d}-{'long' * (i % 4)}name": {"planned": 10 + i, "accepted": i}
        for i in range(30)
    }
    crowded = {
        "counts": {"per_class": many},
        "rejects_by_reason": {f"reason {i} " + "x" * (i * 3): i + 1 for i in range(12)},
        "scores": {},
        "embedding_spread": {},
        "balance": {"before": {k: 5 for k in many}, "after": {k: 9 for k in many}},
    }
    charts = report_module._charts(crowded, data.rows.iloc[:0])
    assert set(charts) == {"counts", "rejects", "balance"}
    body = page.rindex("</body>")
    page = page[:body] + charts_page(list(charts.values())) + page[body:]
    measured, problems = chart_text_problems(page, tmp_path)
    assert problems == []
    assert measured > 200
