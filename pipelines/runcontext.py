"""What one command shares with the build it runs: made by the caller, passed down.

The command line (`synthgen build`) and the Python API (`synthgen.build`) each make one
`RunContext` per command or call and hand it to the build (`run_build(..., run=...)`), which
hands it to its session:

- `started`: when the command began (monotonic clock): the live rate, the ETA and the
  result's `seconds` all run from it, so the command's imports count;
- the gate's process started early (`prestart_gate`, validators.gate_process), taken once
  by the build's session (`take_gate`) and ended with the build if it never was;
- `opened`: the output directories the build opened, newest last: what an interrupted
  command reports and where a failed build records its error;
- `signals`: the SIGINT / SIGTERM the command received, recorded by its signal handlers
  before they unwind it: the record, not the unwinding (which library code can swallow
  or turn into an error of its own), decides the exit status (synthgen.pipelines.cli).

Made and read on the signal path, so this module imports nothing heavy and its methods
that the signal path calls import nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthgen.validators.gate_process import GateProcess

__all__ = ["RunContext"]


@dataclass(frozen=True, eq=False)
class RunContext:
    """One command's clock, early gate, opened outputs and received signals (module doc).

    Its fields never change; the lists record what happens during the command."""

    started: float = field(default_factory=time.monotonic)
    opened: list[Path] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    _gates: list[GateProcess] = field(default_factory=list, init=False, repr=False)

    def prestart_gate(self) -> None:
        """Start the gate's process now, if it is worth one (validators.gate_process), for
        this command's build; once per command."""
        from synthgen.validators.gate_process import prestart

        if not self._gates:
            gate = prestart()
            if gate is not None:
                self._gates.append(gate)

    def take_gate(self) -> GateProcess:
        """The gate for the build opening now: the one started early, if any (only the first
        build of the command gets it), else as `gate_process.take` decides."""
        from synthgen.validators.gate_process import take

        return take(self._gates.pop() if self._gates else None)

    def close_gate(self) -> None:
        """End a gate process started early that no build took (the build ended first)."""
        while self._gates:
            self._gates.pop().close()

    def open_output(self, out: Path) -> None:
        """Record an output directory the build opened."""
        self.opened.append(out)

    @property
    def last_opened(self) -> Path | None:
        """The output directory opened last; None if none was."""
        return self.opened[-1] if self.opened else None

    def receive(self, signum: int) -> None:
        """Record a signal (the signal path: imports nothing)."""
        self.signals.append(signum)

    @property
    def first_signal(self) -> int | None:
        return self.signals[0] if self.signals else None
