"""Fault injection for crash and retry tests, driven by the SYNTHGEN_FAULT environment variable.

`SYNTHGEN_FAULT=<point>:<match>:<action>[:<marker-file>]`, or several such specs separated by
commas (e.g. a sample that fails, then a crash before its shard is written).
- point: `generate` (per sample, before its batch runs, match = key: with `raise`, the
  batch is split in half until that sample alone fails and becomes a `failed` row),
  `generate_batch` (per batched model call, match = the number of samples in the batch,
  e.g. `4`, or `*` for every call: a whole-batch failure such as running out of memory),
  `score` (per sample, before its batch is scored, match = key),
  `check` (per sample, match = key), `write` (per shard, match = 00000),
  `rename` (a finished temporary file about to get its final name, match = that name,
  e.g. `manifest.json` or `00001.tar`), `manifest` (before the manifest, match = `*`)
  A match `#N` fires at the N-th time the point is reached in this process, whatever the
  name (e.g. `stage:#4:kill`: killed while staging the fourth shard, in whatever order the
  runner took them).
- action: `kill` (SIGKILL this process), `raise` (an exception)
- marker-file (optional): fire once only; the file is created when the fault fires.
Unset in normal use: one environment lookup per call.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "SYNTHGEN_FAULT"


class InjectedFault(RuntimeError):
    pass


class FaultPoints:
    """How often each fault point was reached, for `#N` matches.

    A registry: the process holds one, FAULTS. It must be process-wide, since a `#N` match
    counts every time the point is reached in the process, by whichever caller."""

    def __init__(self) -> None:
        self.reached: dict[str, int] = {}

    def maybe_fault(self, point: str, name: str) -> None:
        """Fire the SYNTHGEN_FAULT specs that match (`point`, `name`); nothing when unset."""
        specs = os.environ.get(ENV)
        if not specs:
            return
        self.reached[point] = self.reached.get(point, 0) + 1
        for spec in specs.split(","):
            self._fire(spec, point, name)

    def _fire(self, spec: str, point: str, name: str) -> None:
        parts = spec.strip().split(":", 3)
        if len(parts) < 3:
            return
        want_point, match, action = parts[:3]
        if want_point != point:
            return
        if match.startswith("#"):
            if not match[1:].isdigit() or self.reached.get(point, 0) != int(match[1:]):
                return
        elif match != "*" and match != name:
            return
        if len(parts) == 4:
            marker = Path(parts[3])
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected fault at {point} {name}")


FAULTS = FaultPoints()


def maybe_fault(point: str, name: str) -> None:
    """`FaultPoints.maybe_fault` on this process's FAULTS registry."""
    FAULTS.maybe_fault(point, name)
