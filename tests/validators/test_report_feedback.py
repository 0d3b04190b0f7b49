"""The closed-loop balancing block of the report: the learning curve (points per round, the
baseline and real-only lines), the allocation table with its reasons, the stop reason; a
build without `balance.feedback` draws none of it."""

from __future__ import annotations

import copy
import dataclasses
import html
import re
from pathlib import Path
from typing import Any

from synthgen.schemas.manifest import FeedbackInfo
from synthgen.validators import report as report_module
from synthgen.validators import svgline
from synthgen.validators.report import ReportData, render_html, report_json
from tests.validators.report_fixture import report_data
from tests.validators.test_report import chart_text_problems, charts_page


def _metrics(error: float, recall: float, per_class: dict[str, float]) -> dict[str, Any]:
    return {
        "error": error,
        "macro_error": sum(per_class.values()) / len(per_class),
        "macro_f1": round(1 - error - 0.01, 4),
        "minority_recall": recall,
        "per_class_error": per_class,
        "per_cluster_error": {c: [e, e / 2, 0.0] for c, e in per_class.items()},
        "macro_soft_error": round(error + 0.05, 4),
        "per_class_soft_error": {c: e + 0.05 for c, e in per_class.items()},
    }


def feedback_info() -> dict[str, Any]:
    """A `balance.feedback` record (the manifest contract's field names): three rounds."""
    return {
        "rounds": [
            {
                "round": i,
                "synthetic_so_far": n,
                "metrics": _metrics(err, rec, {"zero": 2 * err, "one": err / 2, "two": err}),
                "allocation": alloc,
                "reason": reason,
                "given_up": ["one"] if i else [],
                "probe": f"_feedback/probe-{i}.safetensors",
                "probe_sha256": f"{i}" * 64,
            }
            for i, (n, err, rec, alloc, reason) in enumerate(
                [
                    (0, 0.31, 0.42, {"zero": 120, "two": 80}, "zero errs most <worst>"),
                    (200, 0.12, 0.81, {"zero": 60, "two": 30, "one": 10}, "zero still errs"),
                    (400, 0.0625, 0.9375, {"zero": 0, "two": 0}, "plateau"),
                ]
            )
        ],
        "stop": "plateau",
        "baseline": _metrics(0.205, 0.57, {"zero": 0.4, "one": 0.05, "two": 0.2}),
        "real_only": _metrics(0.355, 0.35, {"zero": 0.6, "one": 0.05, "two": 0.3}),
        "baseline_method": "short classes repeated to the largest, shifted a pixel <no flips>",
    }


def feedback_build(out: Path) -> tuple[ReportData, dict[str, Any]]:
    """The fixture build with `feedback_info()` in its manifest (validated by the manifest's
    own model), and its report.json content."""
    data = report_data(out)
    balance = data.manifest.balance
    assert balance is not None
    info = FeedbackInfo.model_validate(feedback_info())
    manifest = data.manifest.model_copy(
        update={"balance": balance.model_copy(update={"feedback": info})}
    )
    data = dataclasses.replace(data, manifest=manifest)
    return data, report_json(data)


def _with_feedback(report: dict[str, Any], feedback: dict[str, Any] | None) -> dict[str, Any]:
    report = copy.deepcopy(report)
    report["balance"]["feedback"] = feedback
    return report


def _svg(page: str) -> str:
    match = re.search(r"<svg[^>]*aria-label='closed-loop balancing: learning curve'.*?</svg>", page)
    assert match, "the learning curve is on the page"
    return match.group(0)


def test_learning_curve_has_every_rounds_points_and_the_reference_lines(tmp_path: Path) -> None:
    data, report = feedback_build(tmp_path / "build")
    assert report["balance"]["feedback"]["rounds"][2]["synthetic_so_far"] == 400
    svg = _svg(render_html(data, report))
    curves = dict(re.findall(r"<g class='curve' data-label='([^']*)'>(.*?)</g>", svg))
    assert set(curves) == {"held-out error (probe)", "minority recall (probe)"}
    points = {
        label: [
            (float(x), float(y))
            for x, y in re.findall(r"<circle [^>]*data-x='([^']*)' data-y='([^']*)'", body)
        ]
        for label, body in curves.items()
    }
    assert points["held-out error (probe)"] == [(0, 0.31), (200, 0.12), (400, 0.0625)]
    assert points["minority recall (probe)"] == [(0, 0.42), (200, 0.81), (400, 0.9375)]
    found = re.findall(r"<line class='reference'[^>]*data-y='([^']*)'><title>([^<]*): ", svg)
    refs = {html.unescape(label): float(v) for v, label in found}
    assert refs == {
        "oversampling baseline: held-out error": 0.205,
        "oversampling baseline: minority recall": 0.57,
        "real only: held-out error": 0.355,
        "real only: minority recall": 0.35,
    }
    legend = re.search(r"<g class='legend'>(.*?)</g>", svg)
    assert legend and "oversampling baseline: held-out error" in legend.group(1)


def test_the_curve_rises_where_recall_rises(tmp_path: Path) -> None:
    """Page y grows downwards: a higher recall sits higher (smaller cy), a lower error lower;
    the baseline's line lies between the rounds it falls between."""
    data = report_data(tmp_path / "build")
    svg = _svg(render_html(data, _with_feedback(report_json(data), feedback_info())))
    cy = {
        (label, float(x)): float(y)
        for label, body in re.findall(r"<g class='curve' data-label='([^']*)'>(.*?)</g>", svg)
        for y, x in re.findall(r"cy='([^']*)' r='3' fill='[^']*' data-x='([^']*)'", body)
    }
    recall = [cy[("minority recall (probe)", x)] for x in (0, 200, 400)]
    error = [cy[("held-out error (probe)", x)] for x in (0, 200, 400)]
    assert recall[0] > recall[1] > recall[2]
    assert error[0] < error[1] < error[2]
    base = re.search(r"<line class='reference' x1='[^']*' y1='([^']*)'[^>]*data-y='0.57'", svg)
    assert base and recall[0] > float(base.group(1)) > recall[1]


def test_allocation_table_lists_each_rounds_classes_reason_and_the_stop(tmp_path: Path) -> None:
    data, report = feedback_build(tmp_path / "build")
    page = render_html(data, report)
    table = re.search(r"<table data-table='feedback'>(.*?)</table>", page)
    assert table
    head = re.findall(r"<th>([^<]*)</th>", table.group(1))
    # classes in label order (zero, one, two), whichever round named them first
    assert head[:6] == [
        "round",
        "synthetic so far",
        "held-out error",
        "soft error (mean 1 - p(true class))",
        "macro-F1",
        "minority recall",
    ]
    assert head[6:] == ["next: zero", "next: one", "next: two", "reason"]
    rows = [
        [html.unescape(c) for c in re.findall(r"<td>([^<]*)</td>", tr)]
        for tr in re.findall(r"<tr><td>.*?</tr>", table.group(1))
    ]
    assert rows[0] == [
        "0",
        "0",
        "0.310",
        "0.360",
        "0.680",
        "0.420",
        "120",
        "0",
        "80",
        "zero errs most <worst>",
    ]
    assert rows[1][:2] == ["1", "200"] and rows[1][6:] == ["60", "10", "30", "zero still errs"]
    assert rows[2][1] == "400" and rows[2][6:9] == ["0", "0", "0"]
    assert "Stopped: <b>plateau</b>" in page and "data-stop='plateau'" in page
    assert "<p data-given-up='one'>" in page
    assert "one (left out of round 1's plan and after)." in page
    refs = re.search(r"<table data-table='feedback-references'>(.*?)</table>", page)
    assert refs and "oversampling baseline" in refs.group(1) and "0.205" in refs.group(1)
    classes = re.search(r"<table data-table='feedback-classes'>(.*?)</table>", page)
    # zero's error per probe, worst cluster first: real only, baseline, the last round
    assert "shifted a pixel &lt;no flips&gt;" in page
    assert classes and "<td>zero</td><td>0.600 (0.600 / 0.300 / 0)</td>" in classes.group(1)
    assert "<td>0.125 (0.125 / 0.062 / 0)</td>" in classes.group(1)


def test_no_feedback_block_draws_nothing(tmp_path: Path) -> None:
    data = report_data(tmp_path / "build")
    plain = report_json(data)
    assert "feedback" not in plain["balance"]  # report.json as before closed-loop balancing
    pages = [render_html(data, plain), render_html(data, _with_feedback(plain, None))]
    for page in pages:
        assert "balance-feedback" not in page and "learning curve" not in page
        assert "data-table='feedback" not in page
    assert pages[0] == pages[1]
    assert "feedback" not in report_module._charts(plain, data.rows)
    unbalanced = report_data(tmp_path / "plain", balance=False)
    page = render_html(unbalanced, report_json(unbalanced))
    assert "balance-feedback" not in page and "id='balance'" not in page


def test_one_round_and_a_missing_reference_still_draw(tmp_path: Path) -> None:
    """A build stopped after its first round (x axis from 0 up to a whole number) and a
    record without a real-only probe: the curve has one point each, one reference pair."""
    info = feedback_info()
    info["rounds"] = info["rounds"][:1]
    info["real_only"] = None
    svg = report_module._feedback_chart(info)
    assert svg.count("<circle ") == 2
    assert svg.count("<line class='reference'") == 2
    assert "real only" not in svg
    assert report_module._given_up(info) == [], "round 0 gave up on nothing"


def test_the_chart_is_the_same_bytes_every_time() -> None:
    one = report_module._feedback_chart(feedback_info())
    assert one == report_module._feedback_chart(copy.deepcopy(feedback_info()))
    other = feedback_info()
    other["rounds"][1]["metrics"]["minority_recall"] = 0.5
    assert report_module._feedback_chart(other) != one
    assert svgline.lines("empty", []).startswith("<svg class='chart'")


def test_the_chart_texts_do_not_overlap_in_chromium(tmp_path: Path) -> None:
    """Measured in headless Chromium: legend, ticks and axis labels clear of each other and
    of the plot, for a short run and a long one (twelve rounds, tens of thousands of images,
    values close together)."""
    long = feedback_info()
    last = long["rounds"][-1]
    long["rounds"] = [
        {**copy.deepcopy(last), "round": i, "synthetic_so_far": 2500 * i} for i in range(12)
    ]
    for i, r in enumerate(long["rounds"]):
        r["metrics"]["error"] = 0.0625 - 0.0001 * i
        r["metrics"]["minority_recall"] = 0.9375 + 0.0002 * i
    charts = [report_module._feedback_chart(feedback_info()), report_module._feedback_chart(long)]
    measured, problems = chart_text_problems(charts_page(charts), tmp_path)
    assert problems == []
    assert measured >= 2 * (6 + 5 + 2)  # legend entries, ticks, axis labels per chart
