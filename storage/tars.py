"""Reading WebDataset tars: one walk over a shard's members, grouped into samples."""

from __future__ import annotations

import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TarSample:
    """One run of consecutive members sharing a key (`key.ext`, split at the first dot).

    `parts` keeps every (extension, bytes) member in tar order, repeats included, so a
    checker can see a repeated member; `members` is the usual WebDataset view.
    """

    key: str
    parts: tuple[tuple[str, bytes], ...]

    @property
    def members(self) -> dict[str, bytes]:
        return dict(self.parts)

    @property
    def repeated(self) -> list[str]:
        """Extensions present more than once in this run."""
        exts = [ext for ext, _ in self.parts]
        return sorted({e for e in exts if exts.count(e) > 1})


def iter_tar_samples(
    path: str | Path, extensions: Collection[str] | None = None
) -> Iterator[TarSample]:
    """The samples of a tar in order, one per run of members with the same key.

    A key whose members are not contiguous comes out as two runs; a reader that requires
    contiguity compares keys across runs. `extensions` limits which members are read (the
    rest are skipped unread). Raises tarfile.TarError / OSError / EOFError on a bad tar.
    """
    key: str | None = None
    parts: list[tuple[str, bytes]] = []
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            name, _, ext = m.name.partition(".")
            if key is not None and name != key:
                yield TarSample(key, tuple(parts))
                parts = []
            key = name
            if extensions is not None and ext not in extensions:
                continue
            f = tf.extractfile(m)
            parts.append((ext, f.read() if f else b""))
    if key is not None:
        yield TarSample(key, tuple(parts))
