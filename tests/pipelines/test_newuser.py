"""What a new user meets first (issue 25): refusals before the heavy imports, leaving nothing
behind; `plan` as a real dry run; paths and roots; quiet failures; scheduler-friendly output.

Every refusal runs the command line in a fresh process through a probe that reports, at exit,
which heavy libraries were imported: a refusal must come before any of them (that is what
makes it take well under two seconds, whatever the machine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_main, tiny_recipe_dict, write_recipe
from tests.pipelines.test_balance import make_parquet

HEAVY = ("torch", "diffusers", "apache_beam", "open_clip", "transformers")

# The CLI's main, and at exit one line on stderr: the heavy modules this process imported.
PROBE = f"""
import atexit, sys
atexit.register(lambda: print("HEAVY:" + ",".join(m for m in {HEAVY!r} if m in sys.modules),
                              file=sys.stderr))
from synthgen.pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        lines = proc.stderr.splitlines()
        probe = [ln for ln in lines if ln.startswith("HEAVY:")]
        assert probe, proc.stderr
        self.heavy = [m for m in probe[-1][len("HEAVY:") :].split(",") if m]
        self.stderr = "\n".join(ln for ln in lines if not ln.startswith("HEAVY:"))
        self.seconds = seconds


def probe(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    run = Run(proc, time.monotonic() - start)
    print(f"{' '.join(args[:1])}: {run.seconds:.2f}s, heavy imports {run.heavy}")  # -s shows it
    return run


def refused(run: Run, *needles: str) -> None:
    """Refused by name, before any heavy import."""
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert run.heavy == [], f"imported {run.heavy} before refusing: {run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


@pytest.fixture
def recipe(tmp_path: Path, model_dir: Path) -> Path:
    return write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(model_dir))


def _balance_recipe(tmp: Path, model_dir: Path, source: str, **balance: object) -> Path:
    data = tiny_recipe_dict(model_dir)
    del data["count_per_class"]
    data["balance"] = {"source": source, "target": "max", **balance}
    return write_recipe(tmp / "balance.yaml", data)


# -- B: refusals before the heavy imports, nothing left behind ------------------------------
def test_a_non_empty_output_directory_is_refused_before_heavy_imports(
    tmp_path: Path, recipe: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run = probe("build", str(recipe), "-o", str(out))
    refused(run, "output directory is not empty")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_wrong_label_column_is_refused_before_heavy_imports(
    tmp_path: Path, model_dir: Path
) -> None:
    source = make_parquet(tmp_path / "d.parquet")
    recipe = _balance_recipe(tmp_path, model_dir, str(source), label_column="klass")
    run = probe("build", str(recipe), "-o", str(tmp_path / "out"))
    refused(run, "no column 'klass'", "balance.label_column")
    assert not (tmp_path / "out").exists()


def test_a_missing_balance_source_is_refused_before_heavy_imports(
    tmp_path: Path, model_dir: Path
) -> None:
    recipe = _balance_recipe(tmp_path, model_dir, str(tmp_path / "nowhere"))
    run = probe("build", str(recipe), "-o", str(tmp_path / "out"))
    refused(run, "balance source not found")
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_is_refused_before_anything_is_written(
    tmp_path: Path, recipe: Path
) -> None:
    out = tmp_path / "out"
    run = probe(
        "build", str(recipe), "-o", str(out), "--set", "model.device=cuda",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    refused(run, "model.device", "cuda", "model.device=cpu")
    assert not out.exists(), "a retry must not be blocked by a half-made directory"


def test_resume_with_a_changed_recipe_names_the_changed_fields(
    tmp_path: Path, recipe: Path
) -> None:
    from synthgen.pipelines.output import prepare_output
    from synthgen.schemas.recipe import load_recipe

    out = tmp_path / "out"
    prepare_output(out, load_recipe(recipe)[0], {}, resume=False)  # a build that started
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    run = probe(
        "build", str(recipe), "-o", str(out), "--resume",
        "--set", "seed=8", "--set", "sampling.steps=3",
    )  # fmt: skip
    refused(run, "cannot resume: the recipe changed", "seed: 7 -> 8", "sampling.steps: 2 -> 3")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Path, Path, str]:
    """A complete published build made by the CLI (with --json and a metrics file), from a
    recipe whose model and CLIP paths are relative to the recipe's folder, as in the repo."""
    tmp = tmp_path_factory.mktemp("published")
    (tmp / "models").symlink_to(model_dir)
    (tmp / "recipes").mkdir()
    data = tiny_recipe_dict(Path("../models"), count_per_class=2)
    data["scoring"]["scorers"] = [{"name": n} for n in ("clip", "image_stats", "clip_embedding")]
    data["checks"] = {"clip_score": {"absolute": -1.0}}  # every sample accepted
    recipe = write_recipe(tmp / "recipes" / "recipe.yaml", data)
    metrics = tmp / "metrics.prom"
    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe), "--publish",
         str(tmp / "root"), "--no-progress", "--json", "--metrics-file", str(metrics)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return recipe, tmp / "root", proc.stdout


def test_a_no_op_publish_resume_of_a_complete_build_is_fast(
    published: tuple[Path, Path, str],
) -> None:
    recipe, root, _ = published
    latest = (root / "latest").resolve()
    run = probe("build", str(recipe), "--publish", str(root), "--resume")
    assert run.returncode == 0, run.stderr
    assert run.heavy == [], run.stderr
    assert f"synthgen: published {root}/latest -> builds/{latest.name}" in run.stdout
    assert "0 generated" in run.stdout
    assert (root / "latest").resolve() == latest


# -- C: plan is a dry run ----------------------------------------------------------------
def test_plan_refuses_what_the_build_would_refuse(tmp_path: Path, model_dir: Path) -> None:
    source = make_parquet(tmp_path / "d.parquet")
    bad_column = _balance_recipe(tmp_path, model_dir, str(source), label_column="klass")
    refused(probe("plan", str(bad_column)), "no column 'klass'")
    missing = _balance_recipe(tmp_path, model_dir, str(tmp_path / "nowhere"))
    refused(probe("plan", str(missing)), "balance source not found")
    no_model = write_recipe(
        tmp_path / "r.yaml", tiny_recipe_dict(model_dir, model={"path": str(tmp_path / "gone")})
    )
    refused(probe("plan", str(no_model)), "gone: model folder not found")


def test_plan_shows_a_balancing_builds_deficit_by_class_and_total(
    tmp_path: Path, model_dir: Path
) -> None:
    source = make_parquet(tmp_path / "d.parquet")  # zero 6, one 2, two 4; target max: 6
    recipe = _balance_recipe(tmp_path, model_dir, str(source))
    run = probe("plan", str(recipe))
    assert run.returncode == 0, run.stderr
    assert run.heavy == []
    assert re.search(r"^  one +2 in the source, target 6: 4 to make$", run.stdout, re.M)
    assert re.search(r"^  two +4 in the source, target 6: 2 to make$", run.stdout, re.M)
    assert re.search(r"^  zero +6 in the source, target 6: 0 to make$", run.stdout, re.M)
    assert "deficit: 6 accepted synthetic image(s) to make in total" in run.stdout
    data = json.loads(probe("plan", str(recipe), "--json").stdout)
    assert data["balance"]["deficit"] == {"zero": 0, "one": 4, "two": 2}
    assert data["balance"]["deficit_total"] == 6


# -- F: operability ------------------------------------------------------------------------
def test_build_json_summary_and_metrics_file(published: tuple[Path, Path, str]) -> None:
    _, root, stdout = published
    summary = json.loads(stdout)  # one JSON object, nothing else on stdout
    assert summary["ok"] is True and summary["command"] == "build"
    assert summary["accepted"] + summary["rejected"] + summary["failed"] == 6
    assert summary["published"].endswith("/latest -> builds/" + (root / "latest").resolve().name)
    text = (root.parent / "metrics.prom").read_text()
    assert "# TYPE synthgen_build_images_per_second gauge" in text
    assert "synthgen_build_accepted_total{recipe_hash=" in text
    assert "synthgen_build_success{" in text and "} 1" in text
    for line in text.splitlines():  # every sample line: name{labels} number
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_status_of_a_root_and_of_an_unfinished_dir(
    tmp_path: Path, recipe: Path, published: tuple[Path, Path, str]
) -> None:
    from synthgen.pipelines.output import prepare_output
    from synthgen.schemas.recipe import load_recipe

    _, root, _ = published
    data = json.loads(probe("status", str(root), "--json").stdout)
    assert data["complete"] is True and data["latest"]["shards_written"] == 2
    out = tmp_path / "out"
    prepare_output(out, load_recipe(recipe)[0], {}, resume=False)
    run = probe("status", str(out))
    assert run.returncode == 0 and run.heavy == []
    assert "incomplete; 0 shard(s) written, 3 pending" in run.stdout


def test_status_of_a_missing_or_foreign_folder_fails_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scheduler's typo or a folder that is no build must not exit 0 like a build."""
    missing = tmp_path / "typo"
    code, stdout, stderr = run_main(capsys, "status", str(missing), "--json")
    assert code == 1 and not missing.exists()
    assert json.loads(stdout) == {
        "command": "status",
        "ok": False,
        "error": f"{missing}: no such folder",
    }, stdout
    (tmp_path / "file").write_text("x")
    code, _, stderr = run_main(capsys, "status", str(tmp_path / "file"))
    assert code == 1 and "not a folder" in stderr, stderr
    foreign = tmp_path / "photos"
    foreign.mkdir()
    code, stdout, _ = run_main(capsys, "status", str(foreign))
    assert code == 1 and stdout.strip() == f"{foreign}: not a synthgen build"
    code, stdout, _ = run_main(capsys, "status", str(foreign), "--json")
    assert code == 1 and json.loads(stdout)["ok"] is False and json.loads(stdout)["build"] is False


# -- D: paths and roots -----------------------------------------------------------------
def test_validate_reference_finds_the_builds_clip_folder_from_anywhere(
    tmp_path: Path,
    published: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.pipelines.test_balance import make_folder

    _, root, _ = published
    reference = make_folder(tmp_path / "reference")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # neither the recipe's folder nor its parent
    monkeypatch.chdir(elsewhere)  # in this process: the paths resolve as from a shell there
    _, stdout, stderr = run_main(
        capsys, "validate", str(root), "--reference", str(reference), "--json"
    )
    assert "CLIP model folder not found" not in stderr, stderr
    assert "no manifest" not in stderr, stderr
    summary = json.loads(stdout)
    assert summary["command"] == "validate" and summary["expectations_passed"] > 0
    # measured against the reference (the tiny random CLIP calls everything a near copy)
    assert [f for f in summary["failures"] if not f.startswith("near_copy:")] == [], summary
    cache = (root / "latest" / ".synthgen" / "references").glob("reference-*.parquet")
    assert list(cache), "the reference was embedded with the build's CLIP model"


def test_a_missing_clip_folder_names_clip_model(
    tmp_path: Path, published: tuple[Path, Path, str]
) -> None:
    import shutil

    _, root, _ = published
    build = tmp_path / "build"
    shutil.copytree((root / "latest").resolve(), build)
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["model"]["path"] = str(tmp_path / "moved" / "sd")  # the models moved away
    (build / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(build / ".synthgen")  # and the build with them: no state of this machine
    from synthgen.pipelines.cli import _build_clip_folder
    from synthgen.pipelines.output import BuildError

    with pytest.raises(BuildError, match=r"pass it with --clip-model DIR"):
        _build_clip_folder(build, None)
    assert _build_clip_folder(build, "/given") == "/given"


@pytest.mark.parametrize("command", ["validate", "report", "verify", "status"])
def test_every_command_follows_a_local_publish_root(
    command: str, published: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process: the command line itself is run by the tests around it."""
    _, root, _ = published
    code, stdout, stderr = run_main(capsys, command, str(root))
    assert code == 0, stderr + stdout
    assert "no manifest" not in stderr


def test_a_bad_set_value_is_named_as_that_set(recipe: Path) -> None:
    run = probe("plan", str(recipe), "--set", "count_per_class=abc")
    refused(run, "--set count_per_class=abc: count_per_class: Input should be a valid integer")
    assert f"{recipe}: invalid recipe" not in run.stderr


def test_a_set_path_not_found_says_it_is_relative_to_the_current_directory(
    tmp_path: Path, recipe: Path
) -> None:
    run = probe("plan", str(recipe), "--set", "model.path=models/sd", cwd=tmp_path)
    refused(run, "model folder not found", "relative to the current directory", str(tmp_path))


# -- E: noise --------------------------------------------------------------------------
def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseed: [1, 2\n")
    run = probe("plan", str(bad))
    refused(run, f'in "{bad}", line 2')
    assert "<unicode string>" not in run.stderr


def test_a_closed_stdout_ends_without_a_traceback(published: tuple[Path, Path, str]) -> None:
    _, root, _ = published
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthgen.pipelines.cli", "verify", str(root), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # `| head` that has read enough
    _, err = proc.communicate(timeout=600)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert proc.returncode == 141


def test_the_python_api_does_not_print_beams_apitools_warning() -> None:
    code = (
        "import logging, synthgen.api as api\n"
        "with api._quiet_beam_import():\n"
        "    import synthgen.pipelines.build\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "apitools" not in proc.stderr, proc.stderr


def test_ctrl_c_prints_the_friendly_line_and_no_beam_traceback(
    tmp_path: Path, model_dir: Path
) -> None:
    import signal

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(model_dir, count_per_class=400))
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe), "-o",
         str(tmp_path / "out"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # generation has started: Beam is running the model
        seen.append(line)
        if "model copy on" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ERROR apache_beam" not in err, err
    assert "synthgen: interrupted; the build in" in err
