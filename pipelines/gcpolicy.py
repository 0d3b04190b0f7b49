"""Garbage collection in a process that runs one command and exits.

A build loads Beam, torch, diffusers and open_clip: about 650,000 long-lived objects.
CPython's cyclic collector traverses all of them again at every full collection while they
load (ten full collections in a 10-image build, about 2 s on a 2-core machine) and once more
as the interpreter exits (about 2 s). Only in a process the command line owns (`synthgen ...`
or `python -m synthgen.pipelines.cli`; never in a program that calls `synthgen.build` or
`cli.main`, whose collector is its own business):

- `loading()`: the collector pauses while modules and models load; what they leave is frozen
  (`gc.freeze`: the collector ignores it from then on, it is never garbage before exit), and
  collection resumes for everything made after it (samples, each batch's tensors).
- `exiting()`: when the command has returned, the heap is frozen, so the interpreter's exit
  skips traversing it. Exit still runs every `atexit` handler and flushes the standard
  streams; objects caught in reference cycles are not finalized (CPython never promises
  that at exit), which is why every file a command writes is closed before it returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


class GcPolicy:
    """Whether the command line owns this process (`own_process`), so that the collector
    policy of the module docstring applies.

    A registry: the process holds one, POLICY. It must be process-wide: the collector it
    governs is the process's, and model loading deep in any layer consults it."""

    def __init__(self) -> None:
        self.owned = False

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Collector paused while the block loads modules or models, its survivors frozen
        after; nothing in a process not owned (or where the collector is already off)."""
        if not self.owned or not gc.isenabled():
            yield
            return
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            gc.enable()

    def exiting(self) -> None:
        """The command has returned and the process is about to exit."""
        if self.owned:
            gc.freeze()


POLICY = GcPolicy()


def own_process() -> None:
    """Apply this policy: the command line's entry point calls it for its own process."""
    POLICY.owned = True


def owned() -> bool:
    return POLICY.owned


def loading() -> AbstractContextManager[None]:
    """`GcPolicy.loading` of this process's POLICY."""
    return POLICY.loading()


def exiting() -> None:
    """The command has returned and the process is about to exit."""
    POLICY.exiting()
