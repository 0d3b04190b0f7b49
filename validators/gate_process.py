"""The build's corpus gate in a process of its own, started before the build loads its models.

Loading great_expectations and what it pulls in takes seconds; a build needs it only at the
end, for the gate. The command line (and `synthgen.build`) starts this process as soon as the
recipe has validated (`prestart`; its run context hands it to the build:
synthgen.pipelines.runcontext), so it pays that import on a second core while the build
itself imports Beam, torch and diffusers, one core busy; then it waits for one request: the
gate's arguments as JSON (the build folder, the manifest as it is about to be written, the
recipe), answered with its `CorpusReport` as JSON, or the name of the error the gate raised,
which the build then raises by running the gate itself. Both sides read the pipe as plain
JSON only, so nothing in it can run code. It is used only where it helps: a second core
exists and it is this process's first gate (a command-line build; a long-lived process runs
its later gates itself, loading great_expectations once). `SYNTHGEN_GATE_PROCESS=0` / `1`
turns it off / always on. Whenever the process is unavailable (it could not start, it died,
its answer was unreadable, it stalled) the gate runs here instead, with the same result.

While the process is alive it writes a newline every HEARTBEAT_SECONDS (whitespace before
its JSON answer, which JSON ignores). A process that gives no sign of life for STALL_SECONDS
once the build has asked (stopped with SIGSTOP, or wedged in a way that stops its threads)
is killed, the build logs a warning, and the gate runs here: a build never waits on it
forever. The request is written from a thread of its own, so a process that stopped reading
cannot block the build on a full pipe either.

The process is in a session of its own, so a Ctrl-C at the terminal reaches only the build,
which ends it; if the build itself dies, the process reads the end of its input and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.storage.host import usable_cores

if TYPE_CHECKING:
    from synthgen.schemas.manifest import Manifest
    from synthgen.schemas.recipe import Recipe
    from synthgen.validators.corpus import CorpusReport

logger = logging.getLogger(__name__)

HEAVY_MODULE = "great_expectations"


ENV = "SYNTHGEN_GATE_PROCESS"  # "auto" (default), "1" always, "0" never
HEARTBEAT_SECONDS = 1.0  # the process's sign of life on its answer pipe
STALL_SECONDS = 30.0  # silence after which the build gives up on the process


class GateLaunches:
    """The gate processes this process started (their pids).

    A registry: the process holds one, LAUNCHES. It must be process-wide: only a process's
    first gate is worth a process of its own (`worth_a_process`), whoever asks for it."""

    def __init__(self) -> None:
        self.pids: list[int] = []


LAUNCHES = GateLaunches()


def worth_a_process() -> bool:
    """`SYNTHGEN_GATE_PROCESS`, or by default: a second core, and this process's first gate
    (a long-lived process runs later gates itself, loading great_expectations once)."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice in ("0", "1"):
        return choice == "1"
    return usable_cores() > 1 and not LAUNCHES.pids and HEAVY_MODULE not in sys.modules


def prestart() -> GateProcess | None:
    """The gate's process, started now if it is worth one (see `worth_a_process`), for the
    build the caller starts next to `take`; it is ended when this process exits if no build
    does. None where it is not worth one or could not start."""
    if not worth_a_process():
        return None
    gate = GateProcess(start=True)
    if gate.proc is None:
        return None
    logger.debug("gate process (pid %d) started before the build's imports", gate.proc.pid)
    atexit.register(gate.close)
    return gate


def take(prestarted: GateProcess | None = None) -> GateProcess:
    """The gate for a build starting now: the process `prestart` started, if the build was
    given one; else one started now where `SYNTHGEN_GATE_PROCESS=1` asks for it; else the
    gate runs here (a process started this late would overlap only generation, which uses
    every core)."""
    if prestarted is not None:
        return prestarted
    return GateProcess(start=os.environ.get(ENV, "").strip() == "1")


class GateProcess:
    """One gate, run in a process started now (see the module docstring)."""

    def __init__(self, start: bool = False):
        self.proc: subprocess.Popen[bytes] | None = None
        self.ran_in_process: int | None = None  # the pid that ran the gate, if one did
        if start:
            try:
                # -P: the working directory is not put on the path, so a module there
                # (a `great_expectations.py`, a `synthgen/` folder) is never imported.
                self.proc = subprocess.Popen(
                    [sys.executable, "-P", "-m", "synthgen.validators.gate_process"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                LAUNCHES.pids.append(self.proc.pid)
            except OSError as exc:
                logger.debug("gate process not started (%s): the gate runs in-process", exc)

    def validate(
        self, out: Path, manifest: Manifest, recipe: Recipe | None, *, tars: bool = False
    ) -> CorpusReport:
        """`gate_corpus(out, manifest, recipe, tars=tars)`, in the gate's process if it
        is there and answers, else here."""
        from synthgen.validators.corpus import CorpusReport, gate_corpus

        proc, self.proc = self.proc, None
        if proc is not None:
            request = {
                "out": str(out),
                "manifest": json.loads(manifest.to_json()),  # as it is about to be written
                "recipe": None if recipe is None else recipe.model_dump(mode="json"),
                "tars": tars,
            }
            answer = _ask(proc, request)
            if answer is not None:
                self.ran_in_process = proc.pid
                logger.debug("corpus gate ran in its own process (pid %d)", proc.pid)
                if "report" in answer:
                    return CorpusReport.from_dict(answer["report"])
                # it raised: run it here to raise the same error, with its own traceback
                logger.debug("the gate raised %s there: running it here", answer["error"])
        return gate_corpus(out, manifest, recipe, tars=tars)

    def close(self) -> None:
        """End the process at once if the gate was never asked for (a failed, interrupted or
        resumed build): it has written nothing, so there is nothing to wait for."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc, kill=True)


def _ask(proc: subprocess.Popen[bytes], request: dict[str, Any]) -> dict[str, Any] | None:
    """The process's answer to one request, or None when it gave none that reads, or went
    silent (no heartbeat) for STALL_SECONDS."""
    assert proc.stdin is not None and proc.stdout is not None
    answer: Any = None
    answered = False
    try:
        writer = threading.Thread(
            target=_send, args=(proc.stdin, json.dumps(request).encode()), daemon=True
        )
        writer.start()
        body = _read_until_eof(proc)
        if body is None:
            logger.warning(
                "gate process (pid %d) gave no sign of life for %.0f s: killed; the gate "
                "runs in-process",
                proc.pid,
                STALL_SECONDS,
            )
        else:
            answer = json.loads(body)  # the heartbeats before it are whitespace
            answered = True
    except Exception as exc:  # no answer, or one that does not read: the gate runs here
        logger.debug("gate process gave no answer (%s): the gate runs in-process", exc)
    finally:  # an interrupt while waiting ends the process too, at once
        _end(proc, kill=not answered)
    if not (
        isinstance(answer, dict) and ({"report"} == answer.keys() or {"error"} == answer.keys())
    ):
        return None
    return answer


def _send(pipe: Any, data: bytes) -> None:
    """Write the request and close the pipe (a dead or killed reader ends the write)."""
    with contextlib.suppress(OSError):
        pipe.write(data)
        pipe.close()


def _read_until_eof(proc: subprocess.Popen[bytes]) -> bytes | None:
    """Everything the process writes until it closes its end, or None when nothing arrives
    for STALL_SECONDS."""
    import selectors

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        last = time.monotonic()
        while True:
            left = STALL_SECONDS - (time.monotonic() - last)
            if left <= 0:
                return None
            if not sel.select(timeout=left):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            last = time.monotonic()


def _end(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Close the pipes and reap the process; `kill` ends it first (it has no side effects).

    Killed before its pipes are closed: a request still being written to a stopped process
    holds the pipe's lock until the write fails, which only the process's end makes happen."""
    if kill and proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    """The process's side: import, wait for one request, answer it."""
    import gc
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the build decides when this ends
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.disable(logging.CRITICAL)
    # The answer is the only output on the pipe: anything else a library prints goes nowhere.
    answer_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    pipe = os.fdopen(answer_fd, "wb")
    lock = threading.Lock()
    done = threading.Event()
    threading.Thread(target=_heartbeat, args=(pipe, lock, done), daemon=True).start()
    # the slow part, done while the build loads its models; the collector paused meanwhile
    # and what the imports leave frozen, as the command line does (pipelines.gcpolicy)
    gc.disable()
    import great_expectations.expectations  # noqa: F401

    from synthgen.validators.corpus import gate_corpus

    gc.freeze()
    gc.enable()
    from synthgen.schemas.manifest import Manifest
    from synthgen.schemas.recipe import recipe_from_dict

    try:
        request = json.loads(sys.stdin.buffer.read())
        manifest = Manifest.model_validate(request["manifest"])
        recipe = request["recipe"]
        recipe = None if recipe is None else recipe_from_dict(recipe, "the build's recipe")
        out = Path(request["out"])
        tars = bool(request["tars"])
    except Exception:
        return  # the build ended without asking, or asked what it never asks: it gates itself
    try:
        answer: dict[str, Any] = {"report": gate_corpus(out, manifest, recipe, tars=tars).as_dict()}
    except Exception as exc:
        answer = {"error": type(exc).__name__}
    with lock:
        done.set()
        with contextlib.suppress(OSError):
            pipe.write(json.dumps(answer).encode())
            pipe.close()
    gc.freeze()  # the build waits for this process to end: skip traversing its heap at exit


def _heartbeat(pipe: Any, lock: threading.Lock, done: threading.Event) -> None:
    """A newline every HEARTBEAT_SECONDS until the answer is written: the build's sign that
    this process still runs (JSON reads the newlines as whitespace)."""
    while not done.wait(HEARTBEAT_SECONDS):
        with lock:
            if done.is_set():
                return
            try:
                pipe.write(b"\n")
                pipe.flush()
            except (OSError, ValueError):
                return


if __name__ == "__main__":
    main()
