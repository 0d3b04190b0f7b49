"""Output-side hardening: nothing on disk is trusted without a check, one writer per directory,
content identity on resume, idempotent steps after the manifest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.pipelines.build import BuildError, run_build
from synthgen.pipelines.output import exclusive_lock
from synthgen.validators.corpus import validate_dir
from tests.conftest import read_rows, tiny_recipe_dict, write_recipe
from tests.pipelines.test_balance import make_parquet


def _recipe(tmp: Path, model_dir: Path, **changes: object) -> Path:
    data = tiny_recipe_dict(model_dir)
    data.update(changes)
    return write_recipe(tmp / "recipe.yaml", data)


def _images(out: Path) -> dict[str, str]:
    return {r["key"]: r["image_sha256"] for r in read_rows(out).to_pylist()}


@pytest.fixture
def complete(default_build: Path) -> Path:
    """The complete build of `_recipe`, shared with other modules: copy it before changing it."""
    return default_build


def _copy(build: Path, dest: Path) -> Path:
    shutil.copytree(build, dest)
    return dest


def test_resume_does_not_trust_a_manifest_whose_files_changed(
    tmp_path: Path, complete: Path
) -> None:
    out = _copy(complete, tmp_path / "out")
    tar = out / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:512])
    (out / "00002.parquet").unlink()
    result = run_build(complete.parent / "recipe.yaml", out, resume=True, show_progress=False)
    assert result.reused_shards == [0]
    assert result.generated_now == 7  # shards 1 and 2: five and two samples
    assert validate_dir(out).ok
    assert _images(out) == _images(complete)
    assert list(out.glob("manifest.json.untrusted-*")), "the stale manifest is kept aside"


def test_resume_does_not_trust_another_builds_manifest(
    tmp_path: Path, model_dir: Path, complete: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    recipe = _recipe(other, model_dir, seed=99, count_per_class=2)  # two shards: 5 and 1
    env = {**os.environ, "SYNTHGEN_FAULT": "write:00001:kill"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe), "-o", str(out)],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL
    shutil.copy(complete / "manifest.json", out / "manifest.json")
    result = run_build(recipe, out, resume=True, show_progress=False)
    assert result.generated_now > 0
    assert validate_dir(out).ok
    assert json.loads((out / "manifest.json").read_text())["recipe"]["seed"] == 99


def test_resume_refuses_a_model_folder_whose_content_changed(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = _copy(model_dir, tmp_path / "models")
    # one sample a class: a single shard, interrupted before it is written
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(models, count_per_class=1))
    out = tmp_path / "out"
    monkeypatch.setenv("SYNTHGEN_FAULT", "write:00000:raise")
    with pytest.raises(Exception, match="injected fault"):
        run_build(recipe, out, show_progress=False)
    monkeypatch.delenv("SYNTHGEN_FAULT")
    config = models / "sd" / "scheduler" / "scheduler_config.json"
    data = json.loads(config.read_text())
    data["beta_end"] = data["beta_end"] * 1.01
    config.write_text(json.dumps(data))
    with pytest.raises(BuildError, match="model_sha256"):
        run_build(recipe, out, resume=True, show_progress=False)


def test_a_second_build_on_the_same_directory_is_refused(tmp_path: Path, model_dir: Path) -> None:
    recipe = _recipe(tmp_path, model_dir)
    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out, "output directory"), pytest.raises(BuildError, match="another"):
        run_build(recipe, out, resume=True, show_progress=False)
    assert not (out / "manifest.json").exists()


def test_symlinked_or_non_file_shards_are_refused(tmp_path: Path, complete: Path) -> None:
    out = _copy(complete, tmp_path / "out")
    (out / "manifest.json").unlink()
    outside = tmp_path / "elsewhere.tar"
    shutil.move(out / "00001.tar", outside)
    (out / "00001.tar").symlink_to(outside)
    with pytest.raises(BuildError, match=r"00001\.tar: a symbolic link"):
        run_build(complete.parent / "recipe.yaml", out, resume=True, show_progress=False)
    (out / "00001.tar").unlink()
    (out / "00001.tar").mkdir()
    with pytest.raises(BuildError, match=r"00001\.tar: expected a regular file"):
        run_build(complete.parent / "recipe.yaml", out, resume=True, show_progress=False)


def test_latest_that_is_a_real_directory_is_refused_before_building(
    tmp_path: Path, model_dir: Path
) -> None:
    root = tmp_path / "pub"
    (root / "latest").mkdir(parents=True)
    with pytest.raises(BuildError, match="latest: exists and is not a symbolic link"):
        run_build(_recipe(tmp_path, model_dir), publish_root=root, show_progress=False)
    assert not (root / "builds").exists()


def test_kill_while_writing_the_report_resumes_without_rebuilding(
    tmp_path: Path, model_dir: Path
) -> None:
    recipe = _recipe(tmp_path, model_dir, count_per_class=1)
    root = tmp_path / "pub"
    env = {**os.environ, "SYNTHGEN_FAULT": "rename:report.json:kill"}
    cmd = [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe)]
    proc = subprocess.run([*cmd, "--publish", str(root)], env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    (build,) = (root / "builds").iterdir()
    assert (build / "manifest.json").is_file() and not (build / "report.json").exists()
    result = run_build(recipe, publish_root=root, resume=True, show_progress=False)
    assert result.output == build and result.generated_now == 0
    assert (build / "report.json").is_file() and (build / "report.html").is_file()
    assert (root / "latest").resolve() == build
    assert [p.name for p in (root / "builds").iterdir()] == [build.name]


def test_a_source_already_at_target_gives_a_build_with_no_shards(
    tmp_path: Path, model_dir: Path
) -> None:
    source = make_parquet(tmp_path / "source.parquet")
    data = tiny_recipe_dict(model_dir)
    del data["count_per_class"]
    data["balance"] = {"source": str(source), "target": 1}  # every class has at least 2
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    assert result.manifest.status == "complete"
    assert result.manifest.shards == [] and result.generated_now == 0
    assert result.manifest.balance is not None
    assert result.manifest.balance.after == result.manifest.balance.before
    assert validate_dir(tmp_path / "out").ok
    # and resuming it is a no-op, not a refusal
    again = run_build(recipe, tmp_path / "out", resume=True, show_progress=False)
    assert again.generated_now == 0


def test_a_crash_after_generation_resumes_without_model_work(
    tmp_path: Path, model_dir: Path, complete: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, model_dir)
    out = tmp_path / "out"
    monkeypatch.setenv("SYNTHGEN_FAULT", "write:00001:raise")
    with pytest.raises(Exception, match="injected fault"):
        run_build(recipe, out, show_progress=False)
    monkeypatch.delenv("SYNTHGEN_FAULT")
    staged = sorted(p.name for p in (out / ".synthgen" / "staging").iterdir())
    assert staged == ["00000.arrow", "00001.arrow", "00002.arrow"]
    result = run_build(recipe, out, resume=True, show_progress=False)
    assert result.metrics.get("generated", 0) == 0, "staged samples were generated again"
    assert _images(out) == _images(complete)
    assert not list((out / ".synthgen" / "staging").iterdir()), "staging kept after the build"


def test_the_interrupt_message_says_whether_the_manifest_was_written(tmp_path: Path) -> None:
    from synthgen.pipelines import cli
    from synthgen.pipelines.runcontext import RunContext

    done, half = tmp_path / "done", tmp_path / "half"
    for d in (done, half):
        d.mkdir()
    (done / "manifest.json").write_text("{}")
    assert "incomplete (no manifest)" in cli._output_state(RunContext(opened=[half]))
    assert "--resume to continue it" in cli._output_state(RunContext(opened=[half]))
    assert "is complete (manifest written)" in cli._output_state(RunContext(opened=[half, done]))
    assert "--resume to finish its report" in cli._output_state(RunContext(opened=[done]))
    assert cli._output_state(RunContext()) == "nothing was written"
