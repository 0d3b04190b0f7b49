"""The corpus gate in a process of its own: the same verdict as in-process, and in-process
whenever that process cannot answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthgen.schemas.manifest import Manifest
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from synthgen.validators.corpus import CorpusReport, gate_corpus, validate_corpus
from synthgen.validators.gate_process import GateProcess
from tests.conftest import run_cli
from tests.validators.test_corpus import corpus  # noqa: F401  (module fixture: a tiny build)


def _verdict(report: CorpusReport) -> tuple[object, ...]:
    return (
        report.ok,
        report.failures,
        [(e.dataset, e.expectation, e.kwargs, e.success, e.detail) for e in report.expectations],
    )


def _inputs(out: Path) -> tuple[Manifest, object]:
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    return manifest, recipe_from_dict(manifest.recipe, "manifest.json")


def test_the_gate_in_its_own_process_gives_the_same_verdict(corpus: Path) -> None:  # noqa: F811
    manifest, recipe = _inputs(corpus)
    here = gate_corpus(corpus, manifest, recipe)  # type: ignore[arg-type]
    gate = GateProcess(start=True)
    there = gate.validate(corpus, manifest, recipe)  # type: ignore[arg-type]
    assert gate.ran_in_process not in (None, os.getpid())
    assert here.ok and _verdict(there) == _verdict(here)
    assert len(there.expectations) > 10


def test_a_dead_gate_process_means_the_gate_runs_here(corpus: Path) -> None:  # noqa: F811
    manifest, recipe = _inputs(corpus)
    gate = GateProcess(start=True)
    assert gate.proc is not None
    gate.proc.kill()
    gate.proc.wait()
    report = gate.validate(corpus, manifest, recipe)  # type: ignore[arg-type]
    assert gate.ran_in_process is None
    assert _verdict(report) == _verdict(gate_corpus(corpus, manifest, recipe))  # type: ignore[arg-type]


def test_the_gate_process_raises_what_the_gate_raises(corpus: Path) -> None:  # noqa: F811
    manifest, _ = _inputs(corpus)
    broken = manifest.model_copy(update={"recipe": {**manifest.recipe, "colour": "red"}})
    with pytest.raises(RecipeError, match="colour"):
        validate_corpus(corpus, broken, None, tars=False)
    gate = GateProcess(start=True)
    with pytest.raises(RecipeError, match="colour"):
        gate.validate(corpus, broken, None)  # type: ignore[arg-type]
    assert gate.ran_in_process is not None  # raised there, re-raised here


def test_an_unused_gate_process_ends_with_its_build() -> None:
    gate = GateProcess(start=True)
    proc = gate.proc
    assert proc is not None and proc.poll() is None
    gate.close()
    assert proc.returncode is not None and gate.proc is None


def test_a_command_line_build_gates_in_its_own_process(recipe_file: Path, tmp_path: Path) -> None:
    done = run_cli(
        "-v",
        "build",
        str(recipe_file),
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
        env={"SYNTHGEN_GATE_PROCESS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "corpus gate ran in its own process" in done.stderr
    manifest = Manifest.model_validate_json((tmp_path / "out" / "manifest.json").read_text())
    assert manifest.status == "complete" and manifest.validation is not None
    assert manifest.validation.success and len(manifest.validation.expectations) > 10
