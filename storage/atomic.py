"""Atomic file publication: write under a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_MARK = ".tmp-"


def tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_write(final: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file; on success it is fsynced and renamed to `final`, else removed."""
    from synthgen.storage.faults import maybe_fault

    tmp = tmp_name(final)
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        maybe_fault("rename", final.name)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_write(final) as f:
        f.write(data)


def remove_stale_tmp(folder: Path) -> int:
    """Remove temporary files a crashed writer left behind; returns how many."""
    n = 0
    for p in folder.glob(f".*{TMP_MARK}*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def swap_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` in one atomic step (a new link renamed over the old one)."""
    tmp = tmp_name(link)
    os.symlink(target, tmp)
    os.replace(tmp, link)
