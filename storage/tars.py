"""Reading WebDataset tars: one walk over a shard's members, grouped into samples.

A sample's members are `key.<ext>`: its media (an image, `key.png`; a clip, `key.mp4`: see
`media_member`), `key.json`, `key.txt`, `key.cls`.

Members are read one at a time, never a whole tar at once; with a size bound, a member
whose header declares more bytes is not read at all (a sparse member of a few kilobytes on
disk can declare gigabytes).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

METADATA_BYTES = 2**20  # beside the pixels: C2PA credentials, provenance JSON, chunk headers


def sample_member_limit(width: int, height: int, frames: int = 1) -> int:
    """The most bytes one member of a `width` x `height` build's sample can need: the image
    (a clip: its `frames` frames) uncompressed at 4 bytes a pixel (no encoding is larger),
    plus METADATA_BYTES (an MP4's headers and per-frame tables among them)."""
    return 4 * width * height * max(1, frames) + METADATA_BYTES


class TarMemberTooLarge(tarfile.TarError):
    """A member declares more bytes than the reader's bound; it was not read."""


@dataclass(frozen=True)
class TarMember:
    """One regular file of a tar: its name, the size its header declares, and its bytes
    (None when it was not read: not wanted, or over the size bound, see `too_large`)."""

    name: str
    size: int
    data: bytes | None
    too_large: bool = False


def iter_tar_members(
    path: str | Path,
    wanted: Callable[[str], bool] | None = None,
    *,
    max_bytes: int | None = None,
    compressed: bool = False,
) -> Iterator[TarMember]:
    """The regular-file members of a tar in order, each read only when the caller gets it.

    `wanted(name)` selects the members whose bytes are read (default: all); a member over
    `max_bytes` is yielded unread with `too_large`. Only a plain tar (what a build writes) is
    opened unless `compressed`: a compressed stream can expand without bound. Raises
    tarfile.TarError / OSError / EOFError on a bad tar.
    """
    with tarfile.open(path, "r" if compressed else "r:") as tf:
        seen = getattr(tf, "members", None)  # TarFile keeps every header it read: not here
        while (m := tf.next()) is not None:
            if isinstance(seen, list):
                seen.clear()
            if not m.isfile():
                continue
            if max_bytes is not None and m.size > max_bytes:
                yield TarMember(m.name, m.size, None, too_large=True)
                continue
            if wanted is not None and not wanted(m.name):
                yield TarMember(m.name, m.size, None)
                continue
            f = tf.extractfile(m)
            yield TarMember(m.name, m.size, f.read() if f else b"")


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

    def media_member(self) -> tuple[str, bytes] | None:
        """(extension, bytes) of this sample's media member (an image or a clip: the first
        extension of `storage.codecs.readable_extensions` it has); None: it has none."""
        from synthgen.storage.codecs import readable_extensions

        members = self.members
        ext = next((e for e in readable_extensions() if e in members), None)
        return None if ext is None else (ext, members[ext])

    @property
    def repeated(self) -> list[str]:
        """Extensions present more than once in this run."""
        exts = [ext for ext, _ in self.parts]
        return sorted({e for e in exts if exts.count(e) > 1})


def iter_tar_samples(
    path: str | Path,
    extensions: Collection[str] | None = None,
    *,
    max_member_bytes: int | None = None,
    compressed: bool = True,
) -> Iterator[TarSample]:
    """The samples of a tar in order, one per run of members with the same key.

    A key whose members are not contiguous comes out as two runs; a reader that requires
    contiguity compares keys across runs. `extensions` limits which members are read (the
    rest are skipped unread). A member over `max_member_bytes` raises TarMemberTooLarge
    before it is read; `compressed=False` opens only a plain tar. Raises tarfile.TarError /
    OSError / EOFError on a bad tar.
    """

    def wanted(name: str) -> bool:
        return extensions is None or name.partition(".")[2] in extensions

    key: str | None = None
    parts: list[tuple[str, bytes]] = []
    for member in iter_tar_members(path, wanted, max_bytes=max_member_bytes, compressed=compressed):
        if member.too_large:
            raise TarMemberTooLarge(
                f"member {member.name} declares {member.size} bytes, more than the "
                f"{max_member_bytes} a sample's member can need: not read"
            )
        name, _, ext = member.name.partition(".")
        if key is not None and name != key:
            yield TarSample(key, tuple(parts))
            parts = []
        key = name
        if member.data is not None:
            parts.append((ext, member.data))
    if key is not None:
        yield TarSample(key, tuple(parts))
