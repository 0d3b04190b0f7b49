"""Fault injection for crash and retry tests, driven by the SYNTHGEN_FAULT environment variable.

`SYNTHGEN_FAULT=<point>:<match>:<action>[:<marker-file>]`
- point: `generate` (per sample, before its batch runs, match = key),
  `check` (per sample, match = key), `write` (per shard, match = 00000),
  `rename` (a finished temporary file about to get its final name, match = that name,
  e.g. `manifest.json` or `00001.tar`), `manifest` (before the manifest, match = `*`)
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


def maybe_fault(point: str, name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":", 3)
    if len(parts) < 3:
        return
    want_point, match, action = parts[:3]
    if want_point != point or (match != "*" and match != name):
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
