"""Progress display: a live line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)


def count_progress(progress_dir: Path) -> tuple[int, int, int]:
    """(generated, accepted, rejected) so far, summed over every worker's progress file."""
    generated = accepted = rejected = 0
    for p in progress_dir.glob("*.log"):
        try:
            text = p.read_text(encoding="ascii")
        except OSError:
            continue
        generated += text.count("G")
        accepted += text.count("A")
        rejected += text.count("R")
    return generated, accepted, rejected


class Progress:
    """Polls the workers' progress files in a thread and reports generated/accepted/rejected."""

    def __init__(
        self,
        progress_dir: Path,
        total: int,
        done_accepted: int = 0,
        done_rejected: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
    ):
        self._dir = progress_dir
        self._total = total
        self._base = (done_accepted, done_rejected)
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._interval = interval or (0.5 if self._tty else 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="synthgen-progress", daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._report(final=True)

    def line(self) -> str:
        g, a, r = count_progress(self._dir)
        a += self._base[0]
        r += self._base[1]
        n = g + sum(self._base)
        elapsed = time.monotonic() - self._start
        rate = g / elapsed if elapsed > 0 else 0.0
        return (
            f"generated {n}/{self._total} | accepted {a} | rejected {r} | "
            f"{rate:.1f} img/s | {elapsed:.0f}s"
        )

    def _report(self, final: bool = False) -> None:
        text = self.line()
        if self._tty:
            self._stream.write("\r" + text + ("\n" if final else ""))
            self._stream.flush()
        elif not final:
            logger.info("progress: %s", text)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._report()
