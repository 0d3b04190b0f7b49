"""The progress display: a tqdm bar on a terminal, log lines routed around it, one rate, ETA."""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

import pytest

from synthgen.pipelines.progress import (
    RATE_DEFINITION,
    Progress,
    count_progress,
    eta_seconds,
    rate,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress_files(d: Path, generated: int, accepted: int, rejected: int) -> None:
    (d / "w0.log").write_text("G" * generated + "A" * accepted + "R" * rejected, encoding="ascii")


def test_rate_and_eta_have_one_definition() -> None:
    assert rate(10, 4.0) == 2.5
    assert rate(10, 0.0) == 0.0
    assert eta_seconds(10, 30, 2.5) == 8.0
    assert eta_seconds(0, 30, 0.0) is None
    assert "since the build started" in RATE_DEFINITION


def test_counts_sum_over_workers(tmp_path: Path) -> None:
    _progress_files(tmp_path, 3, 2, 1)
    (tmp_path / "w1.log").write_text("GGA", encoding="ascii")
    assert count_progress(tmp_path) == (5, 3, 1)


def test_log_lines_never_land_on_the_live_line(tmp_path: Path) -> None:
    stream = Terminal()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        _progress_files(tmp_path, 4, 3, 1)
        started = time.monotonic() - 2.0
        with Progress(tmp_path, 10, stream=stream, interval=0.02, started=started) as p:
            time.sleep(0.1)
            logging.getLogger("synthgen.test").info("a log line during the build")
            time.sleep(0.1)
            snap = p.snapshot()
        assert handler in root.handlers, "the original handler is back afterwards"
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    assert "a log line during the build" in text
    for piece in re.split(r"[\r\n]", text):
        if "a log line" in piece:
            assert "img/s" not in piece and "%" not in piece, piece
    bar = [piece for piece in re.split(r"[\r\n]", text) if "img/s" in piece]
    assert bar and "ETA" in bar[-1] and "accepted 3" in bar[-1]
    assert snap["elapsed"] >= 2.0  # the rate runs from the build's start, not from now
    assert snap["rate"] == pytest.approx(4 / snap["elapsed"], rel=0.05)
    assert snap["eta"] == pytest.approx(6 / snap["rate"], rel=0.05)


def test_without_a_terminal_progress_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _progress_files(tmp_path, 2, 2, 0)
    caplog.set_level(logging.INFO, logger="synthgen.pipelines.progress")
    with Progress(tmp_path, 4, stream=io.StringIO(), interval=0.02):
        time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines and "generated 2/4" in lines[-1] and "ETA" in lines[-1]


def test_a_clip_builds_progress_counts_clips(tmp_path: Path) -> None:
    (tmp_path / "w0.log").write_text("GGGC", encoding="ascii")  # one failed a check
    clips = Progress(tmp_path, 8, stream=io.StringIO(), unit="clip").line()
    images = Progress(tmp_path, 8, stream=io.StringIO()).line()
    assert "generated 3/8, 1 clip failed a check so far" in clips and "clips/s" in clips
    assert "1 image failed a check so far" in images and "img/s" in images
    assert "image" not in clips and "img" not in clips


def test_the_rate_runs_from_the_clock_it_is_given(tmp_path: Path) -> None:
    _progress_files(tmp_path, 10, 0, 0)
    long_ago = Progress(tmp_path, 20, stream=io.StringIO(), started=time.monotonic() - 100.0)
    now = Progress(tmp_path, 20, stream=io.StringIO())  # no build clock: its own start
    early, late = long_ago.snapshot(), now.snapshot()
    assert early["elapsed"] >= 100.0 and late["elapsed"] < 5.0
    assert early["rate"] == pytest.approx(10 / early["elapsed"], rel=0.01)
    assert late["rate"] > early["rate"]
