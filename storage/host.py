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


def pin_torch_threads(device: str, threads: int) -> None:
    """Make torch's intra-op thread count `threads` in the calling thread, for CPU work.

    `torch.set_num_threads` reaches the thread that calls it and threads that have not yet
    run a torch op; a thread that already has (one of Beam's shared worker threads, reused
    from build to build in one process) keeps the count it first met. Float rounding on the
    CPU depends on that count, so every model call and scoring batch pins it where it runs:
    a regenerated image then matches its build whichever thread made either.
    """
    if not device.startswith("cpu"):
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
