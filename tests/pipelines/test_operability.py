"""Operability of a build: what it says while it runs (a first line before the heavy imports,
progress counts that mean something, from worker processes too, no library noise), recipe
scaffolds (`synthgen init`) and the `--workers` / `--devices` flags."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthgen.pipelines.init import runner_args
from synthgen.pipelines.output import BuildError
from synthgen.pipelines.progress import Progress
from tests.conftest import SPLIT_THRESHOLD, read_rows, tiny_recipe_dict, write_recipe
from tests.pipelines.test_balance import make_folder, make_parquet

HEAVY = ("torch", "diffusers", "apache_beam", "open_clip", "transformers")

# The CLI's main; when the build's first line is logged, one line on stderr saying when (s
# since start) and which heavy modules were loaded by then; at exit, the same for the end.
PROBE = f"""
import atexit, logging, sys, time
t0 = time.monotonic()
def heavy():
    return ",".join(m for m in {HEAVY!r} if m in sys.modules)
def spy(record):
    if record.getMessage().startswith(("building ", "resuming ")):
        print(f"FIRST-LINE-AT {{time.monotonic() - t0:.2f}} HEAVY:{{heavy()}}", file=sys.stderr)
    return True
logging.getLogger("synthgen").addFilter(spy)
atexit.register(lambda: print("HEAVY:" + heavy(), file=sys.stderr))
from synthgen.pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def heavy_at_exit(proc: subprocess.CompletedProcess[str]) -> list[str]:
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY:")][-1]
    return [m for m in line[len("HEAVY:") :].split(",") if m]


def first_line(proc: subprocess.CompletedProcess[str]) -> tuple[float, list[str]]:
    found = re.search(r"^FIRST-LINE-AT ([0-9.]+) HEAVY:(.*)$", proc.stderr, re.M)
    assert found, proc.stderr
    return float(found.group(1)), [m for m in found.group(2).split(",") if m]


def progress_lines(stderr: str) -> list[str]:
    mark = "synthgen.pipelines.progress: progress: "
    return [ln.split(mark, 1)[1] for ln in stderr.splitlines() if mark in ln]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- the progress line -----------------------------------------------------------------
def test_the_line_counts_per_image_check_failures_while_generating(tmp_path: Path) -> None:
    (tmp_path / "w0.log").write_text("G\nGC\nG\n", encoding="ascii")
    (tmp_path / "w1.log").write_text("G\nGF\n", encoding="ascii")  # another worker process
    with Progress(tmp_path, 10, stream=io.StringIO(), interval=60) as p:
        line = p.line()
        (tmp_path / "w1.log").write_text("G\nGF\nGC\n", encoding="ascii")
        later = p.line()
    assert line.startswith(
        "generated 5/10, 1 image failed a check so far, 1 failed to generate |"
    ), line
    assert later.startswith("generated 6/10, 2 images failed a check so far, 1 failed to gen")
    assert "accepted" not in line, "nothing is accepted or rejected before samples are decided"


def test_the_line_shows_decisions_once_samples_are_decided(tmp_path: Path) -> None:
    (tmp_path / "w0.log").write_text("G\nGC\nG\nG\nA\nR\nA\n", encoding="ascii")
    with Progress(tmp_path, 4, stream=io.StringIO(), interval=60) as p:
        line = p.line()
    assert line.startswith("generated 4/4, checked 3/4: accepted 2, rejected 1 |"), line


def test_the_terminal_bar_has_no_stray_comma_or_space(tmp_path: Path) -> None:
    (tmp_path / "w0.log").write_text("G\nGC\nG\n", encoding="ascii")
    stream = Terminal()
    with Progress(tmp_path, 200, stream=stream, interval=0.02):
        time.sleep(0.1)
    bar = [piece for piece in re.split(r"[\r\n]", stream.getvalue()) if "img/s" in piece][-1]
    assert "3/200, 1 image failed a check so far | " in bar, bar
    assert " ," not in bar and "accepted 0" not in bar, bar


# -- a real build: its first line, its progress, its letters ------------------------------
@pytest.fixture(scope="module")
def split_recipe(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A 12-sample recipe whose CLIP threshold rejects some samples (a per-image check)."""
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}}
    return write_recipe(tmp_path_factory.mktemp("split") / "recipe.yaml", data)


def test_a_build_says_what_it_builds_before_the_heavy_imports_and_counts_checks(
    tmp_path: Path, split_recipe: Path
) -> None:
    out = tmp_path / "out"
    proc = cli(
        "build", str(split_recipe), "-o", str(out), "--set", "count_per_class=4",
        env={"SYNTHGEN_PROGRESS_INTERVAL": "0.2"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    at, heavy = first_line(proc)
    assert heavy == [], f"the first line came after importing {heavy}"
    assert at < 5.0, f"the first line came {at:.1f}s after start"
    assert f"synthgen: building tiny: 12 samples in 3 shards -> {out}" in proc.stderr
    lines = progress_lines(proc.stderr)
    assert lines, proc.stderr
    for line in lines:
        assert re.match(r"generated \d+/12, ", line), line
        assert " ," not in line
    # every letter the workers noted: per-image check failures known during generation are
    # exactly the samples later rejected by that check
    rows = read_rows(out).to_pylist()
    letters = "".join(p.read_text() for p in (out / ".synthgen" / "progress").glob("*.log"))
    clip_rejects = sum(r["reject_reason"] == "clip_score" for r in rows)
    assert 0 < clip_rejects < 12, "the threshold splits the samples"
    assert letters.count("C") == clip_rejects
    assert letters.count("G") == 12 and letters.count("F") == 0
    assert letters.count("A") == sum(r["status"] == "accepted" for r in rows)
    assert letters.count("R") == sum(r["status"] == "rejected" for r in rows)


def test_worker_processes_report_progress_and_beam_stays_quiet(
    tmp_path: Path, split_recipe: Path
) -> None:
    out = tmp_path / "out"
    proc = cli(
        "build", str(split_recipe), "-o", str(out), "--set", "count_per_class=4",
        "--set", "output.shard_size=2", "--workers", "2",
        env={"SYNTHGEN_PROGRESS_INTERVAL": "0.2"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert first_line(proc)[1] == []
    generated = [int(m.group(1)) for ln in progress_lines(proc.stderr)
                 if (m := re.match(r"generated (\d+)/12", ln))]  # fmt: skip
    assert generated and max(generated) > 0, f"no progress from the workers: {proc.stderr}"
    noise = [  # Beam's worker start-up lines, on the workers' own stderr or forwarded
        ln
        for ln in proc.stderr.splitlines()
        if not ln.startswith("HEAVY:")
        and any(w in ln for w in ("apache_beam", "apitools", ":__main__:", "WARNING:root"))
    ]
    assert noise == [], "\n".join(noise)
    assert len(pq.read_table(out / "00000.parquet")) == 2
    # the per-process files add up to the build: every sample once, its check failure known
    rows = read_rows(out).to_pylist()
    files = list((out / ".synthgen" / "progress").glob("*.log"))
    letters = "".join(p.read_text() for p in files)
    assert letters.count("G") == 12
    assert letters.count("C") == sum(r["reject_reason"] == "clip_score" for r in rows)
    assert len({p.name.split("-")[0] for p in files}) >= 2, "written by several processes"


# -- synthgen init ---------------------------------------------------------------------------
def test_init_from_a_model_folder_writes_a_recipe_plan_accepts(
    tmp_path: Path, model_dir: Path
) -> None:
    recipe = tmp_path / "recipes" / "mine.yaml"
    args = ("init", "--model", str(model_dir / "sd"), "--clip-model", str(model_dir / "clip"))
    proc = cli(*args, "--classes", "red-car,blue_bike", "-o", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert heavy_at_exit(proc) == []
    assert f"synthgen: wrote {recipe}" in proc.stdout
    text = recipe.read_text()
    assert "StableDiffusionPipeline" in text and "# " in text, "a commented scaffold"
    assert re.search(r"^  height: 32 ", text, re.M), "the model's native size"
    assert "name: red-car" in text and "a photo of a blue bike" in text
    plan = cli("plan", str(recipe))
    assert plan.returncode == 0, plan.stderr
    assert "20 samples in 1 shard(s)" in plan.stdout
    # never overwritten without --force
    recipe.write_text("# mine\n")
    again = cli(*args, "-o", str(recipe))
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert recipe.read_text() == "# mine\n"
    forced = cli(*args, "-o", str(recipe), "--force")
    assert forced.returncode == 0, forced.stderr
    assert cli("plan", str(recipe)).returncode == 0


@pytest.mark.parametrize("kind", ["parquet", "folder"])
def test_init_from_a_dataset_writes_a_balancing_recipe_plan_accepts(
    kind: str, tmp_path: Path, model_dir: Path
) -> None:
    if kind == "parquet":
        (tmp_path / "data").mkdir()
        source = make_parquet(tmp_path / "data" / "d.parquet")
    else:
        source = make_folder(tmp_path / "data")
    recipe = tmp_path / "balance.yaml"
    proc = cli(
        "init", "--from-dataset", str(source), "--label-column", "label",
        "--model", str(model_dir / "sd"), "--clip-model", str(model_dir / "clip"),
        "-o", str(recipe),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert heavy_at_exit(proc) == []
    plan = cli("plan", str(recipe))
    assert plan.returncode == 0, plan.stderr
    assert "deficit: 6 accepted synthetic image(s) to make in total" in plan.stdout
    one = "class-1" if kind == "parquet" else "one"  # Parquet labels are ids, folders names
    assert re.search(rf"^  {one} +2 in the source, target 6: 4 to make$", plan.stdout, re.M)


def test_init_refuses_what_it_cannot_scaffold(tmp_path: Path, model_dir: Path) -> None:
    clip = ("--clip-model", str(model_dir / "clip"))
    missing = cli("init", "--model", str(tmp_path / "nowhere"), *clip, "-o", str(tmp_path / "r"))
    assert missing.returncode == 1 and "model folder not found" in missing.stderr
    bad = tmp_path / "labels"
    (bad / "Golden Retriever").mkdir(parents=True)
    make_folder(tmp_path / "ok")
    (tmp_path / "ok" / "zero").rename(bad / "Golden Retriever" / "imgs")
    recipe = tmp_path / "r.yaml"
    proc = cli("init", "--from-dataset", str(bad), "--model", str(model_dir / "sd"), *clip,
               "-o", str(recipe))  # fmt: skip
    assert proc.returncode == 1 and "'Golden Retriever'" in proc.stderr, proc.stderr
    assert not recipe.exists() and not (tmp_path / "r").exists()


# -- --workers / --devices --------------------------------------------------------------------
def test_workers_and_devices_become_the_documented_beam_flags() -> None:
    q = "--default_sdk_harness_log_level=ERROR"
    assert runner_args([], workers=4) == (
        ["--direct_running_mode=multi_processing", "--direct_num_workers=4", q],
        {},
    )
    assert runner_args([], workers=1)[0] == ["--direct_num_workers=1", q]
    threads = runner_args(["--direct_running_mode=multi_threading"], workers=3)[0]
    assert threads == ["--direct_running_mode=multi_threading", "--direct_num_workers=3", q]
    args, env = runner_args([], devices="0,2", model_device="cuda", environ={})
    assert args[:2] == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert env == {"CUDA_VISIBLE_DEVICES": "0,2"}
    _, env = runner_args([], devices="cuda:0,cuda:2", model_device="cuda",
                         environ={"CUDA_VISIBLE_DEVICES": "3,5,7"})  # fmt: skip
    assert env == {"CUDA_VISIBLE_DEVICES": "3,7"}, "indices among the GPUs already visible"
    assert runner_args([], devices="8", model_device="cuda", environ={})[1] == {}
    assert runner_args([], verbose=True) == (["--default_sdk_harness_log_level=WARNING"], {})
    assert runner_args(["--default_sdk_harness_log_level=INFO"]) == (
        ["--default_sdk_harness_log_level=INFO"],
        {},
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_args": ["--direct_num_workers=2"], "workers": 4},
         "--workers 4 and --direct_num_workers=2 after `--` both set the number of workers"),
        ({"beam_args": ["--direct_num_workers", "2"], "devices": "2", "model_device": "cuda"},
         "--devices 2 and --direct_num_workers=2"),
        ({"beam_args": ["--runner=DaskRunner"], "workers": 2}, "--runner=DaskRunner sizes"),
        ({"beam_args": ["--direct_running_mode=in_memory"], "workers": 2},
         "in_memory runs one worker"),
        ({"workers": 0}, "--workers 0: at least 1"),
        ({"devices": "2"}, "the recipe's model.device is 'cpu'; --devices is for GPU builds"),
        ({"devices": "2", "model_device": "cuda:1"}, "pins every worker to that one GPU"),
        ({"devices": "0,0", "model_device": "cuda"}, "listed twice"),
        ({"devices": "0,gpu1", "model_device": "cuda"}, "'gpu1' is not a GPU index"),
        ({"devices": "2", "workers": 3, "model_device": "cuda"},
         "--workers 3 and --devices 2: one worker process per device"),
        ({"devices": "0,3", "model_device": "cuda", "environ": {"CUDA_VISIBLE_DEVICES": "4,5"}},
         "shows 2 GPU(s), numbered 0-1"),
        ({"devices": "2", "model_device": "cuda", "environ": {"LOCAL_RANK": "0"}},
         "LOCAL_RANK=0"),
        ({"devices": "0,1", "model_device": "cuda", "environ": {"SYNTHGEN_DEVICES": "cuda:1"}},
         "both choose the GPUs"),
    ],
)  # fmt: skip
def test_contradictory_worker_flags_are_refused_by_name(
    kwargs: dict[str, object], message: str
) -> None:
    kwargs = {"beam_args": [], "environ": {}, **kwargs}
    beam_args = kwargs.pop("beam_args")
    with pytest.raises(BuildError, match=re.escape(message)):
        runner_args(beam_args, **kwargs)  # type: ignore[arg-type]


def test_the_command_line_refuses_them_before_anything_is_loaded_or_written(
    tmp_path: Path, split_recipe: Path
) -> None:
    out = tmp_path / "out"
    both = cli("build", str(split_recipe), "-o", str(out), "--workers", "2",
               "--", "--direct_num_workers=3")  # fmt: skip
    assert both.returncode == 1, both.stderr
    assert "--workers 2 and --direct_num_workers=3" in both.stderr
    assert heavy_at_exit(both) == [] and not out.exists()
    cpu = cli("build", str(split_recipe), "-o", str(out), "--devices", "0,1")
    assert cpu.returncode == 1 and "--devices is for GPU builds" in cpu.stderr
    assert heavy_at_exit(cpu) == [] and not out.exists()
    helptext = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "build", "--help"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "--workers N" in helptext and "--devices LIST|N" in helptext


# -- the Python API -------------------------------------------------------------------------
def test_importing_synthgens_beam_modules_prints_no_apitools_warning() -> None:
    code = (
        "import logging, synthgen\n"
        "import synthgen.pipelines.build\n"
        "logging.getLogger('x').warning('a real warning')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "apitools" not in proc.stderr, proc.stderr
    assert "a real warning" in proc.stderr, "other warnings still show"


def test_the_workers_start_up_notices_are_dropped_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from synthgen.pipelines import build

    log = logging.getLogger(build.WORKER_LOG)  # where Beam forwards the workers' records
    caplog.set_level(logging.WARNING)
    with build._without_harmless_worker_notices():
        log.warning("Worker: severity: WARN message: \"Discarding unparseable args: ['--x']\"")
        log.warning('Worker: severity: WARN message: "No semi_persistent_directory found: "')
        log.warning('Worker: severity: WARN message: "generation failed for sample k"')
    log.warning("Worker: Discarding unparseable args, outside a build")
    shown = [r.getMessage() for r in caplog.records]
    assert shown == [
        'Worker: severity: WARN message: "generation failed for sample k"',
        "Worker: Discarding unparseable args, outside a build",
    ]
