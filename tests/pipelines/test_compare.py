"""`synthgen compare`: candidates calibrated once each under a scratch root, one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from synthgen.pipelines import build, cli
from synthgen.pipelines.compare import (
    COMPARE_HTML,
    COMPARE_JSON,
    Candidate,
    run_compare,
    table_lines,
)
from synthgen.schemas.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "recipes" / "digits.yaml"
# the default at 20 steps, and the same model at 4 steps with a few-step sampler (LCM)
CANDIDATES = [
    Candidate.parse("default:"),
    Candidate.parse("fast: sampling.steps=4 sampling.scheduler=lcm sampling.guidance_scale=1.5"),
]
SMALL = [
    "classes=[{id: 0, name: zero, prompts: [a handwritten digit 0]}, "
    "{id: 1, name: one, prompts: [a handwritten digit 1]}]",
    "output.shard_size=10",
]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every build `compare` runs, with what it generated."""
    results: list[Any] = []
    original = build.run_build

    def run_build(*args: Any, **kwargs: Any) -> Any:
        try:
            result = original(*args, **kwargs)
        except build.ValidationFailed as failed:  # a calibration that failed its gate
            results.append(failed.result)
            raise
        results.append(result)
        return result

    monkeypatch.setattr(build, "run_build", run_build)
    return results


def test_compare_calibrates_each_candidate_once_and_tables_them(
    tmp_path: Path, counted: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = tmp_path / "compare"
    rows = run_compare(
        DIGITS, CANDIDATES, scratch, overrides=SMALL, count_per_class=4, price_per_hour=2.0
    )
    assert [r.candidate for r in rows] == ["default", "fast"]
    assert rows[0].accepted > 0 and rows[0].probe_accuracy is not None
    assert all(r.clip_score is not None and r.label_margin is not None for r in rows if r.accepted)
    assert [r.generated_now for r in counted] == [8, 8]  # one calibration build each
    for row in rows:
        assert row.generated == 8 and 0 <= row.accepted <= 8
        assert row.device_seconds > 0 and row.images_per_second
        if row.accepted:
            per_1k = row.device_seconds_per_1k_accepted
            assert per_1k is not None
            assert per_1k == pytest.approx(row.device_seconds / row.accepted * 1000, rel=1e-3)
            assert row.price_per_1k_accepted == pytest.approx(per_1k / 3600 * 2.0)
        # the recipe's labelled reference scores the probe (real digits the probe never saw)
        assert row.probe_images == "reference"
        assert (scratch / row.candidate / "manifest.json").is_file()  # an ordinary build
    manifest = json.loads((scratch / "fast" / "manifest.json").read_text())
    assert manifest["recipe"]["sampling"]["steps"] == 4
    assert manifest["recipe"]["sampling"]["scheduler"] == "lcm"
    saved = json.loads((scratch / COMPARE_JSON).read_text())
    assert [c["candidate"] for c in saved["candidates"]] == ["default", "fast"]
    page = (scratch / COMPARE_HTML).read_text()
    assert "<section id='compare'>" in page and page.count("<tr>") == 3
    lines = table_lines(rows)
    assert lines[0].startswith("| candidate | images/s") and len(lines) == 4

    # a second compare reuses both calibrations: no build, no model call, the same figures
    counted.clear()
    again = run_compare(
        DIGITS, CANDIDATES, scratch, overrides=SMALL, count_per_class=4, price_per_hour=2.0
    )
    assert counted == []
    assert again == rows

    # the command line: the same candidates, the same scratch root, the same table
    counted.clear()
    argv = ["compare", str(DIGITS), "--scratch", str(scratch), "--count-per-class", "4"]
    argv += ["--price-per-hour", "2", "--candidate", "default:"]
    argv += [
        "--candidate",
        "fast: sampling.steps=4 sampling.scheduler=lcm sampling.guidance_scale=1.5",
    ]
    for item in SMALL:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[: len(lines)] == lines
    assert counted == []


def test_probe_accuracy_separates_informative_from_shuffled_labels() -> None:
    import numpy as np

    from synthgen.pipelines.compare import probe_accuracy
    from synthgen.validators.nearest import ReferenceSet

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4

    real_labels = [i % 3 for i in range(60)]
    real = ReferenceSet(
        refs=[str(i) for i in range(60)],
        labels=real_labels,
        phashes=[""] * 60,
        embeddings=(centres[real_labels] + rng.normal(size=(60, 8))).astype(np.float32),
        thumbnails=[b""] * 60,
    )

    labels = [i % 3 for i in range(90)]
    synthetic = centres[labels] + rng.normal(size=(90, 8))
    good = probe_accuracy(list(synthetic), labels, real)
    shuffled = probe_accuracy(list(synthetic), list(rng.permutation(labels)), real)
    assert good is not None and shuffled is not None
    assert good > 0.9 > 0.6 > shuffled
    assert probe_accuracy(list(synthetic[:5]), [0] * 5, real) is None  # one class only


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ([Candidate.parse("only:")], "at least two candidates"),
        ([Candidate.parse("a:"), Candidate.parse("a: sampling.steps=2")], "named twice: a"),
        (
            [Candidate.parse("a:"), Candidate.parse("b: sampling.scheduler=no-such")],
            "scheduler",
        ),
    ],
)
def test_bad_candidates_fail_before_any_build(
    tmp_path: Path, counted: list[Any], candidates: list[Candidate], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        run_compare(DIGITS, candidates, tmp_path / "c", overrides=SMALL)
    assert counted == [] and not (tmp_path / "c").exists()


def test_candidate_syntax() -> None:
    assert Candidate.parse("lcm: sampling.steps=4 'sampling.scheduler=lcm'") == Candidate(
        "lcm", ("sampling.steps=4", "sampling.scheduler=lcm")
    )
    assert Candidate.for_model("models/digits-ldm/") == Candidate(
        "digits-ldm", ("model.path=models/digits-ldm/",)
    )
    for bad in ("no colon", ": x=1", "a b: x=1", "a: steps"):
        with pytest.raises(RecipeError):
            Candidate.parse(bad)


def test_a_cut_short_or_changed_calibration_is_made_again(
    tmp_path: Path, counted: list[Any]
) -> None:
    """A calibration whose build did not finish (its earlier shards' model time was never
    counted) or whose candidate changed is rebuilt from nothing; a failed-validation
    candidate is a row, also when compare runs again; the user's count_per_class wins."""
    scratch = tmp_path / "c"
    strict = [*SMALL, "validation.min_accepted_fraction=1.0", "checks.clip_score.absolute=0.99"]
    pair = [Candidate.parse("a:"), Candidate.parse("b: sampling.steps=2")]
    rows = run_compare(
        DIGITS, pair, scratch, overrides=[*strict, "count_per_class=1"], count_per_class=4
    )
    assert [r.generated for r in rows] == [2, 2]  # --set count_per_class=1 beat the default
    assert all(r.acceptance == 0 for r in rows)  # failed validation: still rows
    again = run_compare(
        DIGITS, pair, scratch, overrides=[*strict, "count_per_class=1"], count_per_class=4
    )
    assert again == rows and [r.generated_now for r in counted[2:]] == []  # nothing rebuilt
    (scratch / "b" / "manifest.json").unlink()  # as if cut short before its manifest
    changed = [pair[0], Candidate.parse("b: sampling.steps=3")]
    counted.clear()
    run_compare(
        DIGITS, changed, scratch, overrides=[*strict, "count_per_class=1"], count_per_class=4
    )
    assert [r.generated_now for r in counted] == [2]  # only b, made again from nothing
