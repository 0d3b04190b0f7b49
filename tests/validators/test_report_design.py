"""The report a team reads: a verdict card and a table of contents at the top, thresholds on
the histograms, classes in label order, numbers for people, the expectations as a table,
thumbnails captioned with their keys, balancing rounds with `surplus` apart, build time
without the idle time of a resume, near-copy verdicts in `report --reference`, trend
regressions only on enough samples and `--fail-on-regression`; `validate` runs the build's
expectations."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from synthgen.pipelines.build import run_build
from synthgen.pipelines.cli import EXIT_REGRESSED, main
from synthgen.schemas.manifest import BalanceInfo, BalanceRound
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators import report as report_module
from synthgen.validators.corpus import read_manifest
from synthgen.validators.expectations import ExpectationResult, not_run
from synthgen.validators.trend import MIN_ATTEMPTS, MIN_METRIC_SAMPLES, build_trend
from tests.conftest import SPLIT_THRESHOLD, read_rows, run_cli, tiny_recipe_dict, write_recipe
from tests.validators.test_reference_cache import reference_folder

LABEL_ORDER = ["zero", "one", "two"]  # ids 0, 1, 2: not alphabetical


# -- a small HTML tree (stdlib html.parser) ------------------------------------------------

VOID = {"meta", "img", "br", "hr", "input", "link"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    data: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = list(self.data)
        for c in self.children:
            parts.append(c.text())
        return "".join(parts)

    def iter(self) -> list[Node]:
        out = [self]
        for c in self.children:
            out += c.iter()
        return out

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if n.tag == tag and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].data.append(data)


def parse(page: str) -> Node:
    tree = _Tree()
    tree.feed(page)
    tree.close()
    return tree.root


def table_rows(table: Node) -> tuple[list[str], list[list[str]]]:
    head = [th.text().strip() for th in table.find_all("th")]
    body = [
        [td.text().strip() for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")
    ]
    return head, body


# -- one small real build, published ---------------------------------------------------------


@dataclass(frozen=True)
class Built:
    root: Path
    out: Path
    recipe: Path
    reference: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Built:
    """21 samples over three classes, about half rejected by the CLIP threshold, a
    per-class quantile check, a reference set and one metric gate; published."""
    tmp = tmp_path_factory.mktemp("design")
    reference = reference_folder(tmp / "reference")
    data = tiny_recipe_dict(model_dir, count_per_class=7)
    data["checks"] = {
        "clip_score": {"absolute": SPLIT_THRESHOLD},
        "low_information": {"quantile": 0.15},
        "exact_duplicate": False,
    }
    data["scoring"]["scorers"] = [
        {"name": "clip"},
        {"name": "clip_embedding"},
        {"name": "image_stats"},
    ]
    data["reference"] = {"source": str(reference)}
    data["validation"] = {"metrics": {"vendi": {"min": 1.0, "per_class": False}}}
    recipe = write_recipe(tmp / "recipe.yaml", data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHGEN_CACHE_DIR", str(tmp / "cache"))
        result = run_build(recipe, None, publish_root=tmp / "root", show_progress=False)
    return Built(tmp / "root", result.output, recipe, reference)


def _page(out: Path) -> Node:
    return parse((out / "report.html").read_text(encoding="utf-8"))


def test_verdict_card_opens_the_page(built: Built) -> None:
    page = (built.out / "report.html").read_text(encoding="utf-8")
    tree = parse(page)
    manifest = json.loads((built.out / "manifest.json").read_text())
    counts = manifest["counts"]
    card = tree.find("div", id="verdict")
    # before the table of contents and every section
    assert page.index("id='verdict'") < page.index("id='contents'") < page.index("<section")
    gate = card.find("span", **{"data-gate": "pass"})
    assert gate.text() == "PASS" and manifest["validation"]["success"] is True
    assert card.find("b", class_="accepted").text() == str(counts["accepted"])
    assert card.find("b", class_="attempted").text() == str(counts["attempted"]) == "21"
    rate = counts["accepted"] / counts["attempted"]
    assert card.find("b", class_="accept-rate").text() == report_module.fmt_pct(rate)
    assert 0 < counts["accepted"] < 21, "the fixture accepts some and rejects some"
    _, bounds = table_rows(card.find("table", **{"data-table": "bounds"}))
    by_name = {(r[0], r[1]): r for r in bounds}
    vendi = by_name[("vendi", "overall")]
    report = json.loads((built.out / "report.json").read_text())
    assert vendi[2] == report_module.fmt_num(report["metrics"]["overall"]["vendi"])
    assert vendi[3] == "≥ 1" and vendi[4] == "yes"
    failed = by_name[("failed fraction", "overall")]
    assert failed[2] == "0 %" and failed[3] == "≤ 0.1 %" and failed[4] == "yes"
    assert ("accepted fraction", "overall") in by_name
    build_time = card.find("b", class_="build-time").text()
    assert build_time == report_module.fmt_duration(report["timing"]["active_seconds"])
    assert "idle" not in card.text(), "one run: nothing left out"
    assert report["verdict"]["gate"] == "pass" and report["verdict"]["attempted"] == 21


def test_contents_link_to_every_section(built: Built) -> None:
    tree = _page(built.out)
    ids = {n.attrs["id"] for n in tree.iter() if "id" in n.attrs}
    links = [a.attrs["href"] for a in tree.find("nav", id="contents").find_all("a")]
    assert len(links) >= 12
    assert all(h.startswith("#") and h[1:] in ids for h in links), set(links) - ids
    sections = {n.attrs["id"] for n in tree.find_all("section")}
    assert {h[1:] for h in links} == sections, "every section listed, nothing else"


def test_classes_in_label_order(built: Built) -> None:
    report = json.loads((built.out / "report.json").read_text())
    assert report["class_order"] == LABEL_ORDER
    assert list(report["counts"]["per_class"]) == LABEL_ORDER
    for column in report["scores"].values():
        assert list(column) == [c for c in LABEL_ORDER if c in column]
    per_class = report["metrics"]["per_class"]
    assert len(per_class) >= 2 and list(per_class) == [c for c in LABEL_ORDER if c in per_class]
    assert [p["class_name"] for p in report["nearest_pairs"]] == sorted(
        (p["class_name"] for p in report["nearest_pairs"]), key=LABEL_ORDER.index
    )
    tree = _page(built.out)
    counts = tree.find("section", id="counts")
    _, rows = table_rows(counts.find("table"))
    assert [r[0] for r in rows] == LABEL_ORDER
    samples = tree.find("section", id="samples")
    assert [h.text() for h in samples.find_all("h3")] == LABEL_ORDER
    # the histogram panels, left to right
    chart = tree.find("section", id="scores").find("svg")
    panels = [
        g.children[0].text().split(":")[0]
        for g in chart.find_all("g")
        if g.children and g.children[0].tag == "title"
    ]
    assert panels == LABEL_ORDER


def test_thresholds_beside_histograms_with_a_line(built: Built) -> None:
    tree = _page(built.out)
    scores = tree.find("section", id="scores")
    report = json.loads((built.out / "report.json").read_text())
    limits = {t["column"]: t for t in report["thresholds"]}
    clip = limits["clip_tiny_clip_score"]
    assert clip["check"] == "clip_score" and clip["absolute"] == pytest.approx(SPLIT_THRESHOLD)
    notes = {p.attrs["data-column"]: p.text() for p in scores.find_all("p", class_="threshold")}
    assert "clip_score: rejects below -0.085" in notes["clip_tiny_clip_score"]
    assert "per-class cut" in notes["entropy"]
    # one dashed line per class panel, at the threshold, with its value as a tooltip
    svgs = scores.find_all("svg", class_="chart")
    clip_svg = next(s for s in svgs if "clip_tiny_clip_score" in s.attrs["aria-label"])
    lines = clip_svg.find_all("line", class_="threshold")
    assert len(lines) == 3
    assert all(line.find("title").text() == "clip_score threshold: -0.085" for line in lines)
    entropy_svg = next(s for s in svgs if "entropy" in s.attrs["aria-label"])
    cuts = [line.find("title").text() for line in entropy_svg.find_all("line", class_="threshold")]
    assert len(cuts) == 3
    per_class = limits["entropy"]["per_class"]
    assert list(per_class) == LABEL_ORDER
    assert sorted(cuts) == sorted(f"low_information threshold: {v:.4g}" for v in per_class.values())


def test_expectations_are_a_readable_table(built: Built) -> None:
    tree = _page(built.out)
    section = tree.find("section", id="expectations")
    head, rows = table_rows(section.find("table", **{"data-table": "expectations"}))
    assert head == ["dataset", "expectation", "column", "bound", "observed", "pass"]
    manifest = json.loads((built.out / "manifest.json").read_text())
    assert len(rows) == len(manifest["validation"]["expectations"])
    by = {(r[0], r[2], r[1].split(" expect")[0]): r for r in rows}
    unique = by[("samples", "key", "values are unique")]
    assert unique[3] == "–" and unique[5] == "pass"
    status = [r for r in rows if r[2] == "status" and "in {" in r[3]]
    assert any("accepted, rejected, failed" in r[3] for r in status)
    vendi = [r for r in rows if r[0] == "metrics" and r[2] == "vendi" and "≥" in r[3]]
    assert vendi and vendi[0][3] == "≥ 1"
    text = section.text()
    assert '"column"' not in text and "'column'" not in text, "no raw JSON arguments"


def test_thumbnails_are_captioned_with_their_keys(built: Built) -> None:
    tree = _page(built.out)
    rows = read_rows(built.out).to_pandas()
    accepted = set(rows.loc[rows.status == "accepted", "key"])
    rejected = set(rows.loc[rows.status == "rejected", "key"])
    samples = tree.find("section", id="samples")
    strips = samples.find_all("div", class_="strip")
    captions = {
        (strip.find("span").text(), f.find("figcaption").text())
        for strip in strips
        for f in strip.find_all("figure")
    }
    shown_accepted = {k for kind, k in captions if kind == "accepted"}
    shown_rejected = {k for kind, k in captions if kind == "rejected"}
    assert shown_accepted == accepted and shown_rejected == rejected  # every one (<= 10 a class)
    for figure in samples.find_all("figure"):
        assert figure.find("img").attrs["alt"] == figure.find("figcaption").text()
        assert figure.find("img").attrs["src"].startswith("data:image/png;base64,")
    # the key under each accepted image is the key of that image in the tars
    in_tars = {s.key for tar in sorted(built.out.glob("*.tar")) for s in iter_tar_samples(tar)}
    assert shown_accepted <= in_tars
    rejects = tree.find("section", id="rejects")
    assert {f.find("figcaption").text() for f in rejects.find_all("figure")} <= rejected


def test_validate_runs_the_builds_expectations(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = read_manifest(built.out)
    assert manifest.validation is not None
    gated = [e for e in manifest.validation.expectations if e.dataset == "metrics"]
    assert len(gated) == 2, "the vendi gate: not null, and its bound"
    assert main(["validate", str(built.out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["expectations"] == len(manifest.validation.expectations)
    assert result["skipped_expectations"] == [] and result["ok"]
    # what is not run is said by name
    ran = [
        ExpectationResult(e.dataset, e.expectation, e.kwargs, e.success, e.detail)
        for e in manifest.validation.expectations
        if e.dataset != "metrics"
    ]
    assert not_run(ran, manifest.validation.expectations) == [
        "metrics: expect_column_values_to_be_between (vendi)",
        "metrics: expect_column_values_to_not_be_null (vendi)",
    ]


def test_report_reference_shows_the_near_copy_verdicts_validate_prints(
    built: Built, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build"
    shutil.copytree(built.out, out)
    ref = tmp_path / "ref"
    shutil.copytree(built.reference, ref)
    # an exact copy of an accepted image among the real ones
    planted = None
    for tar in sorted(out.glob("*.tar")):
        for sample in iter_tar_samples(tar, extensions={"png", "json"}):
            cls = json.loads(sample.members["json"])["class_name"]
            (ref / cls / "planted.png").write_bytes(sample.members["png"])
            planted = sample.key
            break
        if planted:
            break
    assert planted is not None
    clip = str(model_dir / "clip")
    assert main(["validate", str(out), "--reference", str(ref), "--clip-model", clip]) != 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "near_copy:" in x]
    flagged = {line.split("near_copy: ")[1].split(" ")[0] for line in lines}
    assert planted in flagged
    assert main(["report", str(out), "--reference", str(ref), "--clip-model", clip]) == 0
    report = json.loads((out / "report.json").read_text())
    copies = report["near_copies"]
    assert {s["key"] for s in copies["samples"]} == flagged and copies["count"] == len(flagged)
    assert copies["rule"] == {"min_similarity": 0.95, "max_phash_distance": None}
    tree = _page(out)
    card = tree.find("div", id="near-copies")
    _, rows = table_rows(card.find("table", **{"data-table": "near-copies"}))
    assert {r[0] for r in rows} == flagged
    # the same nearest image as validate names, for every flagged sample
    named = {line.split("near_copy: ")[1].split(" ")[0]: line for line in lines}
    for key, _, nearest_ref, similarity, _ in rows:
        assert f"near copy of {nearest_ref} (similarity {similarity}," in named[key]


# -- build time without idle time ------------------------------------------------------------


def test_build_time_leaves_out_the_idle_time_between_runs(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(built.out, out)
    manifest = read_manifest(out)
    t0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

    def iso(t: datetime) -> str:
        return t.isoformat().replace("+00:00", "Z")

    # run 1: two shards in its first minute, then killed; resumed an hour later: the rest
    starts = [iso(t0), iso(t0 + timedelta(hours=1))]
    (out / ".synthgen" / "runs.jsonl").write_text(
        "".join(json.dumps({"started_at": t}) + "\n" for t in starts)
    )
    finished = [30, 60, 3630, 3650, 3660]
    for shard, seconds in zip(manifest.shard_ids, finished, strict=True):
        stamp = (t0 + timedelta(seconds=seconds)).timestamp()
        os.utime(out / f"{shard:05d}_stats.json", (stamp, stamp))
    manifest = manifest.model_copy(
        update={"created_at": iso(t0), "finished_at": iso(t0 + timedelta(seconds=3700))}
    )
    timing = report_module._timing(manifest, out)
    assert timing["wall_seconds"] == 3700
    assert timing["active_seconds"] == 60 + 100 and timing["idle_seconds"] == 3540
    assert [r["seconds"] for r in timing["runs"]] == [60, 100]
    assert timing["samples_per_second"] == pytest.approx(21 / 160)
    report_module.write_report(out, manifest)
    card = _page(out).find("div", id="verdict")
    assert card.find("b", class_="build-time").text() == "2 min 40 s"
    assert "in 2 runs (59 min idle between them, not counted)" in card.text()
    # a build whose log has no entry: the wall time, as before
    (out / ".synthgen" / "runs.jsonl").unlink()
    assert report_module._timing(manifest, out)["active_seconds"] == 3700


def test_a_resumed_build_counts_only_its_runs(tmp_path: Path, model_dir: Path) -> None:
    """Killed after two shards, resumed 3 s later: two runs, the pause left out."""
    # one sample a class, one a shard, one a model call: three shards
    data = tiny_recipe_dict(model_dir, count_per_class=1, output={"shard_size": 1}, batch_size=1)
    data["model"]["compute_batch"] = 1
    recipe = write_recipe(tmp_path / "r.yaml", data)
    out = tmp_path / "out"
    proc = run_cli(
        "build", str(recipe), "-o", str(out), "--no-progress",
        env={"SYNTHGEN_FAULT": "write:00002:kill"},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    time.sleep(3)
    run_build(recipe, out, resume=True, show_progress=False)
    timing = json.loads((out / "report.json").read_text())["timing"]
    assert len(timing["runs"]) == 2
    assert timing["idle_seconds"] >= 3 and timing["runs"][0]["seconds"] > 0, timing
    assert timing["active_seconds"] == pytest.approx(sum(r["seconds"] for r in timing["runs"]))
    assert timing["active_seconds"] <= timing["wall_seconds"] - 3
    card = _page(out).find("div", id="verdict")
    assert "in 2 runs (" in card.text() and "idle between them, not counted" in card.text()


def test_a_build_records_each_run_start(built: Built) -> None:
    lines = (built.out / ".synthgen" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 1
    start = datetime.fromisoformat(json.loads(lines[0])["started_at"].replace("Z", "+00:00"))
    manifest = read_manifest(built.out)
    created, finished = (
        datetime.fromisoformat(t.replace("Z", "+00:00"))
        for t in (manifest.created_at, manifest.finished_at)
    )
    assert created <= start <= finished
    runs = report_module.build_runs(built.out, manifest)
    assert len(runs) == 1 and runs[0]["started_at"] == manifest.created_at


def test_numbers_for_people() -> None:
    assert report_module.fmt_int(1234567) == "1,234,567"
    assert report_module.fmt_num(1234.5) == "1,234"
    assert report_module.fmt_num(0.123456) == "0.123"
    assert report_module.fmt_num(12.3456) == "12.35"
    assert report_module.fmt_pct(0.4286) == "42.9 %"
    assert report_module.fmt_pct(1.0) == "100 %"
    assert report_module.fmt_duration(72) == "1 min 12 s"
    assert report_module.fmt_duration(4.25) == "4.2 s"
    assert report_module.fmt_duration(7500) == "2 h 5 min"


# -- balancing rounds: surplus apart from quality rejects ------------------------------------


def test_balancing_rounds_count_surplus_apart(built: Built) -> None:
    data = report_module.load_report_data(built.out)
    rows = data.rows.copy()
    # round 0 planned indices 0-3 of every class, round 1 indices 4-6 of `one` and `two`;
    # the last two `two` of round 1 are marked surplus
    surplus_keys = list(rows.loc[(rows.class_name == "two") & (rows["index"] >= 5), "key"])
    assert len(surplus_keys) == 2
    mask = rows["key"].isin(surplus_keys)
    rows.loc[mask, "status"] = "rejected"
    rows.loc[mask, "reject_reason"] = "surplus"
    balance = BalanceInfo(
        source="somewhere",
        target={"zero": 4, "one": 6, "two": 6},
        before={"two": 1, "zero": 0, "one": 0},
        after={"two": 6, "zero": 4, "one": 6},
        rounds=[
            BalanceRound(round=0, planned={"two": 4, "one": 4, "zero": 4}, accepted={}),
            BalanceRound(round=1, planned={"two": 3, "one": 3}, accepted={}),
        ],
        balanced_index="balanced.parquet",
    )
    manifest = data.manifest.model_copy(update={"balance": balance})
    rounds = report_module.balance_rounds(manifest, rows)
    assert rounds is not None and [r["round"] for r in rounds] == [0, 1]
    assert list(rounds[0]["per_class"]) == LABEL_ORDER and list(rounds[1]["per_class"]) == [
        "one",
        "two",
    ]
    two = rounds[1]["per_class"]["two"]
    mine = rows[(rows.class_name == "two") & (rows["index"] >= 4)]
    assert two["requested"] == 3 and two["made"] == len(mine) == 3
    assert two["surplus"] == len(surplus_keys)
    assert two["accepted"] == int((mine.status == "accepted").sum())
    assert two["quality_rejects"] == int(
        ((mine.status == "rejected") & (mine.reject_reason != "surplus")).sum()
    )
    assert rounds[0]["total"]["made"] == 12
    reworked = report_module.ReportData(
        data.out, manifest, rows, data.accepted_images, data.rejected_images
    )
    report = report_module.report_json(reworked)
    assert report["rejects"]["surplus"] == len(surplus_keys)
    assert report["rejects"]["quality"] == int((rows.status == "rejected").sum()) - 2
    assert "surplus" not in report["rejects"]["quality_by_reason"]
    assert list(report["balance"]["before"]) == LABEL_ORDER
    tree = parse(report_module.render_html(reworked, report))
    head, body = table_rows(tree.find("table", **{"data-table": "rounds"}))
    assert head[2:7] == ["requested", "made", "accepted", "quality rejects", "surplus"]
    row = next(r for r in body if r[0] == "1" and r[1] == "two")
    assert row[2:7] == [
        str(two[k]) for k in ("requested", "made", "accepted", "quality_rejects", "surplus")
    ]
    rejects = tree.find("section", id="rejects")
    _, reasons = table_rows(rejects.find("table"))
    assert "surplus" not in {r[0] for r in reasons}


# -- trend: regressions only on enough samples, --fail-on-regression --------------------------


def _trend_report(attempted: int, accepted: int, precision: float, n: int) -> dict[str, Any]:
    half = attempted // 2
    return {
        "recipe_hash": "h",
        "counts": {
            "planned": attempted,
            "accepted": accepted,
            "rejected": attempted - accepted,
            "failed": 0,
            "per_class": {
                "a": {"planned": half, "accepted": accepted // 2},
                "b": {"planned": attempted - half, "accepted": accepted - accepted // 2},
            },
        },
        "rejects_by_class_and_reason": {
            "a/clip_score": half - accepted // 2,
            "b/clip_score": attempted - half - (accepted - accepted // 2),
        },
        "metrics": {"overall": {"precision": precision, "n_synthetic": n}, "per_class": {}},
    }


def test_a_worse_metric_on_few_samples_is_not_a_regression() -> None:
    few = MIN_METRIC_SAMPLES - 1
    before = _trend_report(100, 90, 0.8, few)
    after = _trend_report(100, 90, 0.5, few)
    trend = build_trend(after, before, Path("/p"))
    assert trend["regressions"] == [] and not trend["metrics"]["precision"]["regressed"]
    assert [(h["figure"], h["n_current"], h["minimum"]) for h in trend["held_back"]] == [
        ("precision", few, MIN_METRIC_SAMPLES)
    ]
    enough = build_trend(
        _trend_report(100, 90, 0.5, 50), _trend_report(100, 90, 0.8, 50), Path("/p")
    )
    assert [(r["scope"], r["figure"]) for r in enough["regressions"]] == [("overall", "precision")]
    # the accept rate: 9 of 10 -> 3 of 10 is past tolerance but on too few samples
    small = build_trend(_trend_report(10, 3, 0.8, 50), _trend_report(10, 9, 0.8, 50), Path("/p"))
    assert small["regressions"] == [] and small["held_back"][0]["figure"] == "accept_rate"
    big = build_trend(
        _trend_report(MIN_ATTEMPTS * 2, MIN_ATTEMPTS, 0.8, 50),
        _trend_report(MIN_ATTEMPTS * 2, MIN_ATTEMPTS * 2, 0.8, 50),
        Path("/p"),
    )
    assert ("overall", "accept_rate") in {(r["scope"], r["figure"]) for r in big["regressions"]}
    # an absolute floor: a KID near zero that doubles is noise, not a regression
    tiny = build_trend(
        {**before, "metrics": {"overall": {"kid": 0.0004, "n_synthetic": 50}}},
        {**before, "metrics": {"overall": {"kid": 0.0002, "n_synthetic": 50}}},
        Path("/p"),
    )
    assert tiny["regressions"] == []


def _previous(tmp: Path, name: str, report: dict[str, Any]) -> Path:
    prev = tmp / name
    prev.mkdir()
    (prev / "report.json").write_text(json.dumps(report))
    return prev


def test_fail_on_regression_exits_non_zero_only_on_a_regression(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    shutil.copytree(built.root, root, symlinks=True)
    out = root / "latest"
    current = json.loads((out / "report.json").read_text())
    counts = current["counts"]
    assert counts["accepted"] + counts["rejected"] == 21 >= MIN_ATTEMPTS
    assert counts["accepted"] <= 19, "an accept rate more than 5 points under 100 %"
    # a previous build that accepted every one of its 21 samples: the rate fell on enough
    better = json.loads(json.dumps(current))
    better["counts"]["accepted"], better["counts"]["rejected"] = 21, 0
    for cls in better["counts"]["per_class"].values():
        cls["accepted"] = cls["planned"]
    better["rejects_by_class_and_reason"] = {}
    # the same fall on a previous build of 8 samples: too few to judge
    few = json.loads(json.dumps(better))
    few["counts"] = {**few["counts"], "planned": 8, "accepted": 8}
    few["counts"]["per_class"] = {c: {"planned": 3, "accepted": 3} for c in LABEL_ORDER[:2]}
    few["counts"]["per_class"]["two"] = {"planned": 2, "accepted": 2}

    def point_at(prev: Path) -> None:
        report = json.loads((out / "report.json").read_text())
        report["trend"] = {"previous": {"output": str(prev)}}
        (out / "report.json").write_text(json.dumps(report))

    builds = root / "builds"  # earlier builds are its siblings
    point_at(_previous(builds, "few", few))
    capsys.readouterr()
    assert main(["report", str(out), "--fail-on-regression"]) == 0
    trend = json.loads((out / "report.json").read_text())["trend"]
    assert trend["regressions"] == [] and trend["held_back"]
    point_at(_previous(builds, "better", better))
    assert main(["report", str(out)]) == 0, "without the flag a regression is only reported"
    assert main(["report", str(out), "--fail-on-regression"]) == EXIT_REGRESSED != 0
    err = capsys.readouterr().err
    assert "regression against the previous build" in err and "overall accept_rate 100 ->" in err
    # `build --fail-on-regression` of a scheduled build with nothing left to do reads the same
    args = ["build", str(built.recipe), "--publish", str(root), "--resume", "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--fail-on-regression"]) == EXIT_REGRESSED
    assert "overall accept_rate" in capsys.readouterr().err
