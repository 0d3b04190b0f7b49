"""The report's hand-built SVG charts: tick steps, truncation, escaping, determinism, bounded
output for large builds (no browser; the Chromium text checks are in test_report*.py)."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from synthgen.validators import report as report_module
from synthgen.validators import svgchart
from synthgen.validators.svgchart import fit, nice_ticks, text_width, tick_labels

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("lo", "hi", "target", "integer", "expected"),
    [
        (0, 7, 5, True, [0, 2, 4, 6, 8]),
        (0, 1, 5, False, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0, 2021, 5, True, [0, 500, 1000, 1500, 2000, 2500]),
        (-0.13, 0.01, 3, False, [-0.15, -0.1, -0.05, 0, 0.05]),
        (0, 1, 3, True, [0, 1]),
        (0.4848, 0.4951, 3, False, [0.48, 0.485, 0.49, 0.495, 0.5]),
    ],
)
def test_nice_ticks(lo: float, hi: float, target: int, integer: bool, expected: list) -> None:
    assert nice_ticks(lo, hi, target, integer) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("lo", "hi"), [(3.0, 3.0), (0.0, 0.0), (-1e-4, 2e-4), (5e4, 1.2e7), (float("nan"), 1.0)]
)
def test_nice_ticks_cover_the_range_at_a_nice_step(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    assert len(ticks) >= 2 and ticks == sorted(ticks)
    if np.isfinite(lo):
        assert ticks[0] <= lo and ticks[-1] >= hi
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def test_tick_labels_share_decimals_and_never_say_minus_zero() -> None:
    assert tick_labels([0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert tick_labels([-0.1, -0.05, 0.0, 0.05]) == ["-0.10", "-0.05", "0.00", "0.05"]
    assert tick_labels(nice_ticks(-0.05, 0.0, 5))[-1] == "0.00"
    assert tick_labels([0, 500, 1000]) == ["0", "500", "1000"]
    assert tick_labels([0, 5e6, 1e7]) == ["0", "5e+06", "1e+07"]


def test_fit_truncates_with_an_ellipsis() -> None:
    assert fit("short", 200, 11) == "short"
    long = "class-with-" + "a-very-long-name-" * 5
    cut = fit(long, 120, 11)
    assert cut.endswith("…") and long.startswith(cut[:-1]) and text_width(cut, 11) <= 120
    assert text_width("WWW", 10) > text_width("iii", 10) > 0
    assert text_width("日本", 10) == pytest.approx(2 * 10 * svgchart._SLACK)


def _tree(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def _texts(svg: str) -> list[str]:
    """Every text as drawn (tooltips left out)."""
    out = []
    for t in _tree(svg).iter(f"{SVG}text"):
        tip = t.find(f"{SVG}title")
        out.append((tip.tail if tip is not None else t.text) or "")
    return out


def _crowded(n_classes: int = 12, per_class: int = 50) -> tuple[dict, pd.DataFrame]:
    names = [f"class {i} <b>&'\"{'x' * (3 * i)}" for i in range(n_classes)]
    rng = np.random.default_rng(1)
    n = n_classes * per_class
    cls = np.repeat(names, per_class)
    status = np.where(rng.random(n) < 0.75, "accepted", "rejected")
    rows = pd.DataFrame({"class_name": cls, "status": status, "score": rng.normal(0.3, 0.05, n)})
    rows.loc[::7, "score"] = None
    accepted = {c: int(((cls == c) & (status == "accepted")).sum()) for c in names}
    report = {
        "counts": {
            "per_class": {c: {"planned": per_class, "accepted": accepted[c]} for c in names}
        },
        "rejects_by_reason": {"clip_score": int((status == "rejected").sum()), "a<b": 1},
        "scores": {"score": {}},
        "embedding_spread": {"emb": {c: {"accepted": 0.1, "rejected": None} for c in names}},
        "balance": {"before": {c: 3 for c in names}, "after": {c: 50 for c in names}},
        "embedding_map": {
            "method": "pca",
            "explained_variance": [0.5, 0.25],
            "points": [
                [round(float(x), 5), round(float(y), 5), c, s]
                for (x, y), c, s in zip(rng.normal(size=(n, 2)), cls, status, strict=True)
            ],
        },
    }
    return report, rows


def test_every_chart_is_escaped_well_formed_and_deterministic() -> None:
    report, rows = _crowded()
    charts = report_module._charts(report, rows)
    assert set(charts) == {
        "counts",
        "rejects",
        "scores:score",
        "embeddings:emb",
        "balance",
        "embedding_map",
    }
    again = report_module._charts(*_crowded())
    assert charts == again, "the same report gives the same bytes"
    for key, svg in charts.items():
        assert svg.startswith("<svg class='chart'") and svg.endswith("</svg>")
        assert "<b>" not in svg and "a<b" not in svg, key
        assert ("a&lt;b" if key == "rejects" else "&lt;b&gt;&amp;&#x27;&quot;") in svg, key
        assert " id=" not in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
        root = _tree(svg)
        assert root.find(f".//{SVG}rect[@class='frame']") is not None, key
    # long class names are truncated where they are drawn, the full name a tooltip
    full = "class 11 <b>&'\"" + "x" * 33
    counts = _tree(charts["counts"])
    titled = [t for t in counts.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None]
    assert any(t.find(f"{SVG}title").text == full for t in titled)
    assert all((t.find(f"{SVG}title").tail or "").endswith("…") for t in titled)
    # every bar says what it is
    bars = [r.find(f"{SVG}title").text for r in counts.iter(f"{SVG}rect") if len(r)]
    assert f"{full}, planned: 50" in bars


def test_legends_are_outside_the_plot_area() -> None:
    report, rows = _crowded(3)
    with_legend = []
    for key, svg in report_module._charts(report, rows).items():
        root = _tree(svg)
        legend = root.find(f"{SVG}g[@class='legend']")
        if legend is None:
            continue
        with_legend.append(key)
        frame = root.find(f".//{SVG}rect[@class='frame']")
        assert frame is not None
        right = float(frame.get("x")) + float(frame.get("width"))
        top = float(frame.get("y"))
        for t in legend.iter(f"{SVG}text"):
            assert float(t.get("x")) > right or float(t.get("y")) < top, key
    assert with_legend, "the crowded report draws charts with legends"


def test_histograms_bin_every_value_per_class_and_status() -> None:
    report, rows = _crowded(4)
    svg = report_module._charts(report, rows)["scores:score"]
    panels = re.findall(r"<g><title>([^<]*)</title>", svg)
    assert len(panels) == 4
    for panel in panels:
        name, totals = panel.rsplit(": ", 1)
        mine = rows[rows["class_name"] == html.unescape(name)].dropna(subset=["score"])
        n_acc, n_rej = (int(x.split()[0]) for x in totals.split(", "))
        assert n_acc == (mine["status"] == "accepted").sum()
        assert n_rej == (mine["status"] == "rejected").sum()
    assert "score" in _texts(svg) and {"accepted", "rejected"} <= set(_texts(svg))


def test_score_counts_match_numpy_histograms() -> None:
    _, rows = _crowded(5, 300)
    rows.loc[3, "score"] = float(rows["score"].max())  # the top edge falls in the last bin
    rows.loc[4, "score"] = float("inf")  # left out, as NaN is
    edges, counts = report_module.score_counts(rows, "score") or ([], {})
    finite = rows[np.isfinite(pd.to_numeric(rows["score"]))]
    assert len(edges) == report_module.HIST_BINS + 1
    assert sum(map(sum, counts.values())) == len(finite)
    for (cls, status), mine in counts.items():
        v = finite.loc[(finite["class_name"] == cls) & (finite["status"] == status), "score"]
        assert mine == np.histogram(v, bins=edges)[0].tolist(), (cls, status)
    assert report_module.score_counts(rows.assign(score=None), "score") is None
    assert report_module.score_counts(rows, "absent") is None


def test_large_builds_cost_bounded_output() -> None:
    """10 classes x 2000 rows: histograms stay binned counts, the map draws a fixed
    subsample of each status (and says so)."""
    report, rows = _crowded(10, 2000)
    charts = report_module._charts(report, rows)
    emap = charts["embedding_map"]
    drawn = emap.count("h0") + emap.count("l5 5m0-5l-5 5")
    legend_marks = 3
    n_rejected = sum(1 for p in report["embedding_map"]["points"] if p[3] == "rejected")
    assert (
        drawn == report_module.MAP_DRAWN + min(n_rejected, report_module.MAP_DRAWN) + legend_marks
    )
    assert "Points drawn: 3000 of" in emap and "(a fixed subsample)" in emap
    assert len(charts["scores:score"]) < 40_000
    assert sum(map(len, charts.values())) < 600_000


def test_no_rejects_is_said_in_the_chart() -> None:
    svg = svgchart.hbars("r", [], [], svgchart.REJECTED, "rejected samples", empty="no rejects")
    assert "no rejects" in _texts(svg) and "class='inside'" in svg


def test_sparklines_stay_plain_svg() -> None:
    bars = report_module.sparkline_bars([0.1, 0.5, 0.5], title="a&b")
    assert "a&amp;b" in bars and bars.count("<rect") == 2
    _tree(bars)
    _tree(report_module.sparkline_line([1.0, None, 2.0, 3.0]))
