"""The build's corpus gate in a process of its own, started when the build starts.

Loading great_expectations and what it pulls in takes seconds; a build needs it only at the
end, for the gate. A process started with the build pays that import on another core while
the build generates, then waits for one request: the gate's arguments (pickled, between two
processes of this same program), answered with its `CorpusReport` or the exception it
raised. It is used only where it helps: a second core exists and it is this process's first
gate (a command-line build; a long-lived process runs its later gates itself, loading
great_expectations once). `SYNTHGEN_GATE_PROCESS=0` / `1` turns it off / always on.
Whenever the process is unavailable (it could not start, it died, its answer was
unreadable) the gate runs here instead, with the same result.

The process is in a session of its own, so a Ctrl-C at the terminal reaches only the build,
which ends it; if the build itself dies, the process reads the end of its input and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synthgen.schemas.manifest import Manifest
    from synthgen.schemas.recipe import Recipe
    from synthgen.validators.corpus import CorpusReport

logger = logging.getLogger(__name__)

HEAVY_MODULE = "great_expectations"


ENV = "SYNTHGEN_GATE_PROCESS"  # "auto" (default), "1" always, "0" never


_STARTED: list[int] = []  # gate processes this process started


def worth_a_process() -> bool:
    """`SYNTHGEN_GATE_PROCESS`, or by default: a second core, and this process's first gate
    (a long-lived process runs later gates itself, loading great_expectations once)."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice in ("0", "1"):
        return choice == "1"
    return (os.cpu_count() or 1) > 1 and not _STARTED and HEAVY_MODULE not in sys.modules


class GateProcess:
    """One gate, run in a process started now (see the module docstring)."""

    def __init__(self, start: bool | None = None):
        self.proc: subprocess.Popen[bytes] | None = None
        self.ran_in_process: int | None = None  # the pid that ran the gate, if one did
        if worth_a_process() if start is None else start:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "synthgen.validators.gate_process"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                _STARTED.append(self.proc.pid)
            except OSError as exc:
                logger.debug("gate process not started (%s): the gate runs in-process", exc)

    def validate(
        self, out: Path, manifest: Manifest, recipe: Recipe, *, tars: bool = False
    ) -> CorpusReport:
        """`validate_corpus(out, manifest, recipe, tars=tars)`, in the gate's process if it
        is there and answers, else here."""
        from synthgen.validators.corpus import validate_corpus

        proc, self.proc = self.proc, None
        if proc is not None:
            answer = _ask(proc, (out, manifest, recipe, tars))
            if answer is not None:
                kind, value = answer
                self.ran_in_process = proc.pid
                logger.debug("corpus gate ran in its own process (pid %d)", proc.pid)
                if kind == "error":
                    raise value
                return value  # type: ignore[no-any-return]
        return validate_corpus(out, manifest, recipe, tars=tars)

    def close(self) -> None:
        """End the process if the gate was never asked for (a failed or resumed build)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc)


def _ask(proc: subprocess.Popen[bytes], args: tuple[Any, ...]) -> tuple[str, Any] | None:
    """The process's answer to one request, or None when it gave none."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        pickle.dump(args, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.close()
        answer = pickle.load(proc.stdout)
    except (OSError, EOFError, pickle.PickleError, AttributeError, ImportError) as exc:
        logger.debug("gate process gave no answer (%s): the gate runs in-process", exc)
        answer = None
    finally:
        _end(proc)
    if not (isinstance(answer, tuple) and len(answer) == 2 and answer[0] in ("ok", "error")):
        return None
    return answer


def _end(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    """The process's side: import, wait for one request, answer it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the build decides when this ends
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.disable(logging.CRITICAL)  # the answer is the only output
    # the slow part, done while the build generates
    import great_expectations.expectations  # noqa: F401

    from synthgen.validators.corpus import validate_corpus

    try:
        out, manifest, recipe, tars = pickle.load(sys.stdin.buffer)
    except (EOFError, OSError, pickle.PickleError):
        return  # the build ended without asking
    try:
        answer: tuple[str, Any] = ("ok", validate_corpus(out, manifest, recipe, tars=tars))
    except Exception as exc:
        answer = ("error", exc)
    try:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle: the build reruns the gate
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
