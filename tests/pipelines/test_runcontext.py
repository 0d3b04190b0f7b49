"""Explicit run state: each command's `RunContext` (clock, early gate, opened output,
signals), and the few process-wide registries, each an object of its own."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import types
from pathlib import Path

import pytest

from synthgen.generators.devices import Device, DeviceClaims
from synthgen.pipelines import cli, runner
from synthgen.pipelines.build import run_build
from synthgen.pipelines.gcpolicy import GcPolicy
from synthgen.pipelines.output import BuildError
from synthgen.pipelines.runcontext import RunContext
from synthgen.storage import hashing
from synthgen.storage.faults import FAULTS, FaultPoints, InjectedFault, maybe_fault
from synthgen.storage.hashing import FolderHashes
from synthgen.storage.host import usable_cores
from synthgen.validators import gate_process

# -- the run context ------------------------------------------------------------------------


def test_each_run_has_its_own_clock_and_records() -> None:
    before = time.monotonic()
    a, b = RunContext(), RunContext(started=12.5)
    assert before <= a.started <= time.monotonic() and b.started == 12.5
    a.open_output(Path("/x/one"))
    a.open_output(Path("/x/two"))
    a.receive(signal.SIGTERM)
    assert a.last_opened == Path("/x/two") and a.first_signal == signal.SIGTERM
    assert b.last_opened is None and b.first_signal is None and b.signals == []
    with pytest.raises(AttributeError):
        a.started = 0.0  # type: ignore[misc]


def test_a_signal_is_recorded_in_the_run_whose_handlers_got_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved = (
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
        sys.unraisablehook,
        __import__,
    )
    earlier, run = RunContext(), RunContext()
    first = cli._handle_signals(earlier)
    try:
        later = cli._handle_signals(run)  # a later command in the same process
        try:
            with pytest.raises(cli.Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            with pytest.raises(cli.Interrupted):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            later.raising = False  # the command has returned: recorded only
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        finally:
            later.restore()
    finally:
        first.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == saved[:2]
    assert sys.unraisablehook is saved[2]
    assert __import__ is saved[3]
    assert run.signals == [signal.SIGTERM, signal.SIGINT, signal.SIGINT]
    assert earlier.signals == []
    assert cli._signal_exit(earlier) is None  # a run that got no signal exits as it would
    assert cli._signal_exit(run) == cli.EXIT_TERMINATED  # the first signal decides
    assert "synthgen: terminated; nothing was written" in capsys.readouterr().err


def test_a_signal_during_an_import_unwinds_once_the_import_has_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A C++ initialiser that calls back into Python (torch.distributed's) aborts the
    # process if the handler raises inside it: the import finishes, then the command unwinds.
    (tmp_path / "sg_slow_import.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "import json\n"  # a nested import finishes without unwinding either
        "FINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    saved_import = __import__
    run = RunContext()
    signals = cli._handle_signals(run)
    try:
        with pytest.raises(cli.Terminated):
            import sg_slow_import  # noqa: F401
    finally:
        signals.restore()
    assert sys.modules["sg_slow_import"].FINISHED
    assert run.signals == [signal.SIGTERM]
    import builtins

    assert builtins.__import__ is saved_import
    sys.modules.pop("sg_slow_import")


def test_a_program_that_calls_main_keeps_its_own_handlers(tmp_path: Path) -> None:
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook
    assert cli.main(["plan", str(tmp_path / "missing.yaml")]) == cli.EXIT_FAILED
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == saved[:2]
    assert sys.unraisablehook is saved[2]


def test_only_this_runs_swallowed_unwinding_is_dropped_as_unraisable() -> None:
    seen: list[object] = []
    saved = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: seen.append(unraisable.exc_value)
    quiet, signalled = RunContext(), RunContext()
    signalled.receive(signal.SIGINT)
    try:
        for run in (quiet, signalled):
            signals = cli._handle_signals(run)
            signals.restore()  # the hook stays callable: what `install` put in place
            for exc in (cli.Interrupted(signal.SIGINT), ValueError("a finalizer's own")):
                signals._unraisable(types.SimpleNamespace(exc_value=exc))
    finally:
        sys.unraisablehook = saved
    # a run without a signal passes everything on; one with a signal drops only its own
    assert [type(e).__name__ for e in seen] == ["Interrupted", "ValueError", "ValueError"]


def test_library_records_are_dropped_only_after_this_runs_signal() -> None:
    import logging

    quiet, signalled = RunContext(), RunContext()
    signalled.receive(signal.SIGINT)
    record = logging.LogRecord("apache_beam.runner", logging.ERROR, "", 0, "boom", None, None)
    ours = logging.LogRecord("synthgen.pipelines", logging.ERROR, "", 0, "ours", None, None)
    assert cli._AfterSignal(quiet).filter(record)
    assert not cli._AfterSignal(signalled).filter(record)
    assert cli._AfterSignal(signalled).filter(ours)


def test_setting_up_logging_again_replaces_the_earlier_runs_filter() -> None:
    import logging

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        root.handlers[:] = []
        first, second = RunContext(), RunContext()
        cli._setup_logging(False, run=first)
        cli._setup_logging(False, run=second)
        for handler in root.handlers:
            mine = [f for f in handler.filters if isinstance(f, cli._AfterSignal)]
            assert len(mine) == 1 and mine[0]._run is second
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def _ended(gate: gate_process.GateProcess, proc: object) -> bool:
    return gate.proc is None and getattr(proc, "returncode", None) is not None


def test_the_early_gate_goes_to_the_first_build_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gate_process.ENV, "1")
    run = RunContext()
    run.prestart_gate()
    run.prestart_gate()  # once per command
    assert len(run._gates) == 1
    started = run._gates[0]
    assert started.proc is not None
    taken = run.take_gate()
    assert taken is started
    monkeypatch.setenv(gate_process.ENV, "0")
    later = run.take_gate()  # a second build of the command: as gate_process.take decides
    assert later is not started and later.proc is None
    proc = taken.proc
    taken.close()
    assert _ended(taken, proc)


def test_a_build_that_fails_early_ends_the_gate_it_never_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(gate_process.ENV, "1")
    run = RunContext()
    run.prestart_gate()
    gate = run._gates[0]
    proc = gate.proc
    assert proc is not None and proc.poll() is None
    with pytest.raises(BuildError, match="exactly one of an output directory"):
        run_build({"name": "x"}, run=run)  # refused before any recipe is read
    assert run._gates == [] and _ended(gate, proc)


def test_run_build_takes_a_run_or_a_start_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        run_build({"name": "x"}, "out", started=1.0, run=RunContext())


def test_a_failed_build_records_its_error_where_the_run_opened_it(tmp_path: Path) -> None:
    from synthgen.pipelines.status import ERROR_NAME
    from synthgen.schemas.manifest import STATE_DIR, STATE_NAME

    elsewhere, opened = tmp_path / "elsewhere", tmp_path / "opened"
    for d in (elsewhere, opened):
        (d / STATE_DIR).mkdir(parents=True)
        (d / STATE_DIR / STATE_NAME).write_text("{}")  # a build started there
    cli._record_build_error(RunContext(opened=[elsewhere, opened]), "the model ran out")
    cli._record_build_error(RunContext(), "nowhere to record")  # nothing opened: nothing kept
    assert "the model ran out" in (opened / STATE_DIR / ERROR_NAME).read_text()
    assert not (elsewhere / STATE_DIR / ERROR_NAME).exists()


# -- the registries -------------------------------------------------------------------------


def test_fault_points_count_per_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHGEN_FAULT", "stage:#2:raise")
    points = FaultPoints()
    points.maybe_fault("stage", "a")
    with pytest.raises(InjectedFault, match="stage b"):
        points.maybe_fault("stage", "b")
    points.maybe_fault("stage", "c")  # the third: #2 fired once
    assert points.reached == {"stage": 3}
    before = dict(FAULTS.reached)
    maybe_fault("other", "x")  # the module function counts in the process's registry
    assert FAULTS.reached.get("other", 0) == before.get("other", 0) + 1
    assert points.reached == {"stage": 3}


def test_a_folder_is_hashed_once_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "w.safetensors").write_bytes(b"0" * 100)
    calls: list[Path] = []
    real = hashing.file_sha256

    def counted(path: Path, chunk: int = hashing.CHUNK) -> str:
        calls.append(path)
        return real(path, chunk)

    monkeypatch.setattr(hashing, "file_sha256", counted)
    hashes = FolderHashes()
    first = hashes.sha256(tmp_path)
    assert hashes.sha256(tmp_path) == first and len(calls) == 2 and len(hashes) == 1
    (tmp_path / "a.json").write_text('{"changed": 1}')
    os.utime(tmp_path / "a.json", ns=(1, 1))
    assert hashes.sha256(tmp_path) != first and len(calls) == 4
    assert FolderHashes().sha256(tmp_path) == hashing.folder_sha256(tmp_path)


def test_two_claim_tables_never_hold_one_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHGEN_DEVICE_CLAIMS", str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    devices = [Device("cuda:0", "gpu-a"), Device("cuda:1", "gpu-b")]
    first, second, third = DeviceClaims(), DeviceClaims(), DeviceClaims()
    try:
        assert first.claim("cuda", devices) == "cuda:0"
        assert first.claim("cuda", devices) == "cuda:0", "one answer per table"
        assert second.claim("cuda", devices) == "cuda:1"  # the lock file of cuda:0 is held
        first.release()
        assert first.held == {} and third.claim("cuda", devices) == "cuda:0"
    finally:
        for claims in (first, second, third):
            claims.release()


def test_malloc_thresholds_are_set_once_per_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(runner, "_set_malloc_thresholds", fake)
    tuning = runner.MallocTuning()
    assert tuning.done is None
    assert tuning.prepare() and tuning.prepare() and tuning.done is True
    assert calls == [1]


def test_the_collector_policy_applies_only_where_owned() -> None:
    frozen = gc.get_freeze_count()
    free = GcPolicy()
    with free.loading():
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    owned = GcPolicy()
    owned.owned = True
    try:
        with owned.loading():
            assert not gc.isenabled()
            kept = [object() for _ in range(10)]
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
        gc.enable()


def test_one_core_count_for_host_threads_and_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthgen.pipelines.generate import StageSpec

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert usable_cores() == (expected or usable_cores()) >= 1
    spec = StageSpec(None, None, None, (), (), "")  # type: ignore[arg-type]
    assert spec.threads() == usable_cores()
    assert StageSpec(None, None, None, (), (), "", host_threads=3).threads() == 3  # type: ignore[arg-type]
    monkeypatch.setenv(gate_process.ENV, "auto")
    monkeypatch.setattr(gate_process, "usable_cores", lambda: 1)
    monkeypatch.setattr(gate_process.LAUNCHES, "pids", [])
    assert not gate_process.worth_a_process()  # one core: the gate runs in the build's process
