"""Watched `multi_processing` workers: a worker process that ends mid-build fails the build.

Beam's SubprocessSdkWorkerHandler runs each worker process from a thread that only raises
when the process ends; the build's thread went on waiting for the bundle that worker was
running, so a worker killed mid-bundle (the kernel's out-of-memory killer, `kill -9`) left
the build waiting forever. synthgen's pipelines run their subprocess workers under an
environment of their own, WATCHED_WORKER_URN (`runner._quiet_workers` renames Beam's
subprocess environment), whose handler, WatchedWorkers, watches the process: when it ends
without having been asked to, every request the build is waiting on from it, and every later
one, fails with WorkerProcessDied, which is also recorded in DEATHS so that the build raises
it whatever Beam raised on its way out (`runner._run`).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from typing import Any

from apache_beam.runners.portability.fn_api_runner import worker_handlers as wh

from synthgen.pipelines.output import BuildError

logger = logging.getLogger(__name__)

WATCHED_WORKER_URN = "synthgen:env:watched_subprocess_python:v1"


class WorkerProcessDied(BuildError):
    """A `multi_processing` worker process ended while the build needed it."""


# Every worker death of this process, in order (`runner._run` compares its length).
DEATHS: list[WorkerProcessDied] = []


def exit_cause(code: int) -> str:
    """A worker's exit status in words (through Beam's shell: 128 + N is signal N)."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        name = signal.Signals(number).name if number else ""
    except ValueError:
        name = ""
    if not name:
        return f"exit status {code}"
    oom = ", as the kernel's out-of-memory killer ends a process" if number == 9 else ""
    return f"killed by {name}{oom}"


def died(cause: str) -> WorkerProcessDied:
    return WorkerProcessDied(
        f"a worker process ended while the build needed it ({cause}); shards finished "
        "before it are kept: rerun the same command with --resume to continue the build "
        "(with fewer --workers or a smaller model.compute_batch if it ran out of memory)"
    )


@wh.WorkerHandler.register_environment(WATCHED_WORKER_URN, bytes)
class WatchedWorkers(wh.SubprocessSdkWorkerHandler):  # type: ignore[misc]
    """Beam's subprocess worker handler, watching its process (see the module docstring)."""

    def start_worker(self) -> None:
        from apache_beam.runners.portability import local_job_service

        self.stopping = False
        self.worker = local_job_service.SubprocessSdkWorker(
            self._worker_command_line, self.control_address, self.provision_info, self.worker_id
        )
        self.worker_thread = threading.Thread(name="run_worker", target=self._watch)
        self.worker_thread.start()

    def _watch(self) -> None:
        try:
            self.worker.run()
        except RuntimeError as exc:  # Beam's "Worker subprocess exited with return code N"
            found = re.search(r"return code (-?\d+)", str(exc))
            cause = exit_cause(int(found.group(1))) if found else str(exc)
            if self.stopping:  # asked to end: nothing waits on it any more
                logger.debug("a worker process ended (%s) as the build closed it", cause)
                return
            self._fail(died(cause))

    def _fail(self, error: WorkerProcessDied) -> None:
        """Every request to the dead worker fails with `error`: later ones at once (push
        replaced first, so none slips in between), then those already waiting."""
        DEATHS.append(error)
        conn = self.control_conn
        push = conn.push

        def refuse(req: Any) -> Any:
            if req is wh.BeamFnControlServicer._DONE_MARKER:
                return push(req)  # the servicer's end of the stream still gets it
            future = wh.ControlFuture(getattr(req, "instruction_id", "") or "dead")
            future.abort(error)
            return future

        conn.push = refuse  # type: ignore[method-assign]
        for future in list(conn._futures_by_id.values()):
            future.abort(error)

    def close(self) -> None:
        self.stopping = True  # Beam ends the worker first, then calls stop_worker
        super().close()
