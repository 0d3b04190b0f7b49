"""The corpus gate in a process of its own: the same verdict as in-process, and in-process
whenever that process cannot answer."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest

from synthgen.schemas.manifest import Manifest
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from synthgen.validators.corpus import CorpusReport, gate_corpus, validate_corpus
from synthgen.validators.gate_process import GateProcess
from tests.conftest import run_cli, tiny_recipe_dict, write_recipe


def _verdict(report: CorpusReport) -> tuple[object, ...]:
    return (
        report.ok,
        report.failures,
        [(e.dataset, e.expectation, e.kwargs, e.success, e.detail) for e in report.expectations],
    )


def _small_recipe(tmp_path: Path, model_dir: Path) -> Path:
    """The tiny recipe with one sample a class: a single shard."""
    return write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(model_dir, count_per_class=1))


def _inputs(out: Path) -> tuple[Manifest, object]:
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    return manifest, recipe_from_dict(manifest.recipe, "manifest.json")


def test_the_gate_in_its_own_process_gives_the_same_verdict(corpus: Path) -> None:
    manifest, recipe = _inputs(corpus)
    here = gate_corpus(corpus, manifest, recipe)  # type: ignore[arg-type]
    gate = GateProcess(start=True)
    there = gate.validate(corpus, manifest, recipe)  # type: ignore[arg-type]
    assert gate.ran_in_process not in (None, os.getpid())
    assert here.ok and _verdict(there) == _verdict(here)
    assert len(there.expectations) > 10


def test_a_dead_gate_process_means_the_gate_runs_here(corpus: Path) -> None:
    manifest, recipe = _inputs(corpus)
    gate = GateProcess(start=True)
    assert gate.proc is not None
    gate.proc.kill()
    gate.proc.wait()
    report = gate.validate(corpus, manifest, recipe)  # type: ignore[arg-type]
    assert gate.ran_in_process is None
    assert _verdict(report) == _verdict(gate_corpus(corpus, manifest, recipe))  # type: ignore[arg-type]


def test_the_gate_process_raises_what_the_gate_raises(corpus: Path) -> None:
    manifest, _ = _inputs(corpus)
    broken = manifest.model_copy(update={"recipe": {**manifest.recipe, "colour": "red"}})
    with pytest.raises(RecipeError, match="colour"):
        validate_corpus(corpus, broken, None, tars=False)
    gate = GateProcess(start=True)
    with pytest.raises(RecipeError, match="colour"):
        gate.validate(corpus, broken, None)  # type: ignore[arg-type]
    assert gate.ran_in_process is not None  # raised there, then raised here by running it here


def test_an_unused_gate_process_ends_with_its_build() -> None:
    gate = GateProcess(start=True)
    proc = gate.proc
    assert proc is not None and proc.poll() is None
    gate.close()
    assert proc.returncode is not None and gate.proc is None


def test_a_command_line_build_gates_in_the_process_it_started_first(
    model_dir: Path, tmp_path: Path
) -> None:
    done = run_cli(
        "-v",
        "build",
        str(_small_recipe(tmp_path, model_dir)),
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
        env={"SYNTHGEN_GATE_PROCESS": "1"},
    )
    assert done.returncode == 0, done.stderr
    started = re.findall(
        r"gate process \(pid (\d+)\) started before the build's imports", done.stderr
    )
    ran = re.findall(r"corpus gate ran in its own process \(pid (\d+)\)", done.stderr)
    assert len(started) == 1 and ran == started  # the one started first, not a later one
    manifest = Manifest.model_validate_json((tmp_path / "out" / "manifest.json").read_text())
    assert manifest.status == "complete" and manifest.validation is not None
    assert manifest.validation.success and len(manifest.validation.expectations) > 10


def test_a_failing_verdict_is_the_same_in_both_places(corpus: Path) -> None:
    manifest, recipe = _inputs(corpus)
    counts = manifest.counts
    planned = {name: n + 1 for name, n in counts.planned_per_class.items()}  # one never made
    tampered = manifest.model_copy(
        update={"counts": counts.model_copy(update={"planned_per_class": planned})}
    )
    here = gate_corpus(corpus, tampered, recipe)  # type: ignore[arg-type]
    gate = GateProcess(start=True)
    there = gate.validate(corpus, tampered, recipe)  # type: ignore[arg-type]
    assert gate.ran_in_process not in (None, os.getpid())
    assert not here.ok and _verdict(there) == _verdict(here)


def _processes_tagged(tag: str) -> list[int]:
    """Live processes whose environment holds `tag` (a build and what it started)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or not ours
            continue
    return found


@pytest.mark.parametrize("action", ["raise", "kill"])
def test_a_build_that_dies_leaves_no_gate_process(
    model_dir: Path, tmp_path: Path, action: str
) -> None:
    tag = f"SYNTHGEN_TEST_TAG={uuid.uuid4().hex}"
    done = run_cli(
        "build",
        str(_small_recipe(tmp_path, model_dir)),
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
        env={
            "SYNTHGEN_GATE_PROCESS": "1",
            "SYNTHGEN_FAULT": f"write:00000:{action}",
            tag.split("=")[0]: tag.split("=")[1],
        },
    )
    assert done.returncode != 0
    assert not (tmp_path / "out" / "manifest.json").exists()
    if action == "raise":  # the build ended it on its way out
        assert _processes_tagged(tag) == []
        return
    # SIGKILL: the gate process sees its input close and ends by itself (after its imports)
    deadline = time.monotonic() + 60
    while _processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_tagged(tag) == []
