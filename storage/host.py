"""What this machine lets the current process use: the one core count every layer asks."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on, at least 1: its CPU affinity (a `taskset` or a
    container's cpuset narrows it), else the machine's core count where affinity is unknown
    (not on Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
