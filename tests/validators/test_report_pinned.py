"""The report's bytes, pinned: report.json, report.html and every chart from a fixed input
(tests/validators/report_fixture.py) hash to the values recorded here. A change to how the
report is assembled that changes none of its output keeps these passing; a change to what
it shows must update them on purpose."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from synthgen.validators import report as report_module
from synthgen.validators import svgchart
from synthgen.validators.report import ReportData, render_html, report_json
from synthgen.validators.trend import build_trend
from tests.validators.report_fixture import previous_report, report_data
from tests.validators.test_svgchart import _crowded


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)  # as write_report writes it


def _rounded(value: Any) -> Any:
    """`value` with every float at 8 significant digits: what no BLAS kernel changes."""
    if isinstance(value, float):
        return float(f"{value:.8g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _with_trend(data: ReportData, report: dict[str, Any], tmp: Path) -> dict[str, Any]:
    gates = (data.manifest.recipe.get("validation") or {}).get("metrics") or {}
    report["trend"] = build_trend(report, previous_report(report), tmp / "build-previous", gates)
    return report


# name -> (report.json sha256, report.html sha256)
PINNED = {
    "computed_metrics": (
        "6c997549fb1d8bd0278441bd6848df0e187ccae4e1a48528ec8530e64c6f0e45",
        "99dbbdab2be549a00044bc3d8f300b2de619177d8d4b92ba3afff0285d54aa5a",
    ),
    "full": (
        "a8c5c208ff34950d10d572b152768c0ef744ca01e871dba05363c581160366e8",
        "1cda14c9aadd252a362af04e2e374910213986961c04cb5fd8680b12151fd5b4",
    ),
    "plain": (
        "0bf742d99031d2d4025a56bd62d7eb666c0393c0eb35763acae21db16f6a9e53",
        "f03c8e09f52679a15185d52ccd81902cb6b750faccdae881bb6916172927c839",
    ),
}

# report.json as a second x86 machine (AMD EPYC, AVX-512 BLAS kernels) writes it: the
# metrics' last digits (Frechet distance's matrix square root, Vendi's eigenvalues) round
# differently there; the page, which shows them rounded, is the same.
PINNED_AVX512_JSON = {
    "computed_metrics": "03ccd51d0c06724bcc892152827d21851fcaccb4cfc0deb629d09361dea52751",
    "full": "574f0ed6f9dd10d7d6182752d89893a9e6a9c63b88d7d52a04de8fde895f3206",
}

# On other machines (a third: AMD EPYC, AVX2 kernels) the metrics' last digits move again:
# report.json with every float at 8 significant digits, as any of them writes it.
PINNED_ROUNDED_JSON = {
    "computed_metrics": "58c6b92813cf7e0cf314e1473311e7e6b667c6f79740cd93c4df3f919201759f",
    "full": "eca081c5ebe4e81d2e3cddf36b4a6e790826b12036e61f7c8a7e87954bca6ccf",
    "plain": "8866d9202490f65d94ed20ab4d93707c12766b7fa02c169bc98d3be92192b21c",
}


def _variant(name: str, tmp: Path) -> tuple[ReportData, dict[str, Any]]:
    if name == "full":
        data = report_data(tmp / "build-a")
        return data, _with_trend(data, report_json(data), tmp)
    if name == "plain":  # no reference, no balancing, no trend
        data = report_data(tmp / "build-b", reference=False, balance=False)
        report = report_json(data)
        report["trend"] = None
        return data, report
    # another reference than the build's own: the metrics computed from the embeddings
    data = dataclasses.replace(report_data(tmp / "build-c"), reference_location="/x/other-ref")
    return data, _with_trend(data, report_json(data), tmp)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_report_bytes_are_pinned(name: str, tmp_path: Path) -> None:
    data, report = _variant(name, tmp_path)
    page = render_html(data, report)
    json_sha, page_sha = PINNED[name]
    assert _sha(page) == page_sha
    exact = _sha(_json(report)) in (json_sha, PINNED_AVX512_JSON.get(name, json_sha))
    assert exact or _sha(_json(_rounded(report))) == PINNED_ROUNDED_JSON[name], name


def test_the_fixture_fills_every_section(tmp_path: Path) -> None:
    """The pinned input reaches every part of the report (else the pins prove little)."""
    data, report = _variant("full", tmp_path)
    page = render_html(data, report)
    for section in (
        "summary", "counts", "balance", "scores", "embeddings", "failures", "rejects",
        "metrics", "embedding-map", "nearest", "trend", "timing", "samples", "expectations",
        "provenance",
    ):  # fmt: skip
        assert f"<section id='{section}'>" in page, section
    for table in ("bounds", "near-copies", "rounds", "runs", "trend", "balance", "timing"):
        assert f"data-table='{table}'" in page, table
    assert [t["check"] for t in report["thresholds"]] == [
        "clip_score",
        "low_information",
        "near_copy",
    ]
    assert report["thresholds"][1]["per_class"], "a per-class quantile cut"
    assert report["near_copies"]["count"] == 1 and "NEAR COPY" in page
    assert report["trend"]["regressions"] and report["trend"]["held_back"]
    assert len(report["timing"]["runs"]) == 2 and report["rejects"]["surplus"]
    assert report["failures"]["count"] == 3
    assert any(b["scope"].startswith("class:") for b in report["verdict"]["bounds"])


# chart key -> sha256 of the SVG, for the crowded input of test_svgchart
CROWDED_CHARTS: dict[str, str] = {
    "counts": "ed39c5a9c619bca14dee441176da5d965e6b58e35a36f221726f606bf68401e8",
    "rejects": "bdfa32453997d31565bf5e46ca340de0adb7433c3b5ab2f09eb68d0d7b1bcf53",
    "scores:score": "8cc8e434be4db9ebfc5f6d568bdaadbc297778a4697898ecf3b97c7f5096c3f1",
    "embeddings:emb": "cb76f32b877ad328721e78993b5372e8682863cee410044f1d5466a16a2db8f7",
    "balance": "d2ce7a69fadccf2f74e291ea52a9393f6e3955484ccd9ffe968881415de04546",
    "embedding_map": "56ef57e234bbbd2106d77befd72c083fceef2792f93922f8bfb7afbe4e32abb0",
}


def test_crowded_charts_are_pinned() -> None:
    charts = report_module._charts(*_crowded())
    assert {k: _sha(v) for k, v in charts.items()} == CROWDED_CHARTS


def _odd_charts() -> dict[str, str]:
    """The charts' less common paths: a title, missing and fractional bars, an empty bar
    chart, thresholds past the bins and panels over several rows, a scatter with a note."""
    return {
        "bars": svgchart.grouped_bars(
            "fractions",
            ["a", "b <c>", "d"],
            [("x", [0.25, None, -0.5], "#111"), ("y", [1.5, 2.0, None], "#222")],
            ylabel=["two", "lines"],
            title="a title that is long enough to need some room " * 3,
        ),
        "one_series": svgchart.grouped_bars("one", ["only"], [("n", [0], "#333")]),
        "hbars_empty": svgchart.hbars("none", [], [], "#444", "samples", empty="nothing"),
        "hbars": svgchart.hbars("some", ["p", "q" * 80], [0.5, 2.25], "#555", "share"),
        "grid": svgchart.histogram_grid(
            "grid",
            "a title",
            [0.0, 0.5, 1.0, 1.5],
            [
                (f"panel {i}", [("a", [i, 2, 0], "#666"), ("b", [0, 1, 3], "#777")])
                for i in range(7)
            ],
            columns=3,
            thresholds=[None, 2.5, -1.0, float("nan"), 0.75, None, 1.0],
            threshold_label="cut <x>",
        ),
        "scatter": svgchart.scatter(
            "map",
            [
                (0.1 * i, (i % 7) - 3.0, f"g{i % 3}", ("dot", "circle", "cross", "other")[i % 4])
                for i in range(40)
            ],
            {"g0": "#1f77b4", "g1": "#ff7f0e", "g2": "#2ca02c", "absent": "#000"},
            [
                ("dot", "reference", "dot"),
                ("circle", "kept", "circle"),
                ("cross", "dropped " * 30, "cross"),
            ],
            "PC1",
            "PC2",
            note="Points drawn: 1 of 2 (a fixed subsample).",
        ),
        "scatter_empty": svgchart.scatter("map", [], {}, [("circle", "kept", "circle")], "x", "y"),
    }


ODD_CHARTS: dict[str, str] = {
    "bars": "08b59f00d1184af750ccaae273a9fc55d712c6d74aa0970ae619f922a797c5bc",
    "one_series": "1872d7846c3a5e7c6556ddc58cbe5a6a52d3603fbb6112988e9b26fe01c7aa83",
    "hbars_empty": "328950a754ca7d7b211da9334bd2d106fa810db03b7ddf998e09291dd3edc943",
    "hbars": "fb562e40ec98f1378293e0cffd8097d4c0a419f98a5f53afcef288268b284c5e",
    "grid": "483da23f2b01b61ba99b62565c33ae86ac4cb3acfc08bbd7acd8810291520a15",
    "scatter": "57195322e25cde0dbee1391cfeed0c9a8631b63f2ec481fb68d972a69bd39bf0",
    "scatter_empty": "38d00d25e04e12c7e4117caf899659088680f10b09ab7c6adc0b5080026bcb16",
}


def test_odd_charts_are_pinned() -> None:
    assert {k: _sha(v) for k, v in _odd_charts().items()} == ODD_CHARTS
