"""WebDataset shards (a glob or brace pattern); labels from each sample's `.cls`.

Members are grouped into samples by WebDataset's own rule (`split_member`): the key is the
member's path up to the first dot of its file name, so `v1.0/a.png` is key `v1.0/a` and
`./a.png` is key `./a`. Labels, images and masks are all read in this one walk.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from synthgen.generators.sources.base import (
    Source,
    SourceError,
    SourceImage,
    SourceOptions,
    inside_root,
)
from synthgen.schemas.media import IMAGE_EXTENSIONS
from synthgen.storage.tars import iter_tar_members

# Which member a sample's image is read from when it has several: the order readers used
# before bmp and gif were read (png, jpg, jpeg, webp), then those — so a source with both a
# .jpg and a .webp member keeps giving the same image (and conditioning identity).
MEMBER_ORDER = tuple(dict.fromkeys(("png", "jpg", "jpeg", "webp", *IMAGE_EXTENSIONS)))

_PATTERN_CHARS = "{*?["

# webdataset's `base_plus_ext` and meta-member rule (tariterators), so a sample's key here is
# the key every WebDataset reader sees
_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


def split_member(name: str) -> tuple[str, str] | None:
    """A member name's (key, extension), extension lower-cased; None for a member that is
    no sample's (no extension, or a `__meta__` member)."""
    if _META.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__")):
        return None
    match = _MEMBER.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def expand_pattern(pattern: str) -> list[str]:
    import braceexpand

    urls: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        urls += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    return urls


def is_pattern(location: str) -> bool:
    """Whether `location` is a shard pattern (glob or braces), not one path."""
    return any(c in location for c in _PATTERN_CHARS)


class WebDatasetSource(Source):
    """Local shards only. Each is handed to webdataset as an absolute path, so no name is
    ever read as a `pipe:` or other URL scheme; a shard that is a symbolic link must resolve
    inside its own folder (the folder the pattern names), or it is refused by name.
    """

    format = "webdataset"

    @classmethod
    def open(cls, location: str, options: SourceOptions) -> WebDatasetSource:
        """A shard pattern, one shard, or a folder (its `*.tar` shards)."""
        if not is_pattern(location) and Path(location).is_dir():
            return cls(str(Path(location) / "*.tar"))
        return cls(location)

    @classmethod
    def guess(cls, location: str) -> int:
        if location.endswith(".tar") or is_pattern(location):
            return 30
        path = Path(location)
        return 15 if path.is_dir() and any(path.glob("*.tar")) else 0

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.description = f"WebDataset {pattern}"
        urls = expand_pattern(pattern)
        if not urls:
            raise SourceError(f"{pattern}: no shards match")
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing:
            raise SourceError(f"{pattern}: shard {missing[0]} not found")
        for u in urls:
            path = Path(os.path.abspath(u))
            if path.is_symlink():
                real = path.resolve()
                if not inside_root(real, path.parent.resolve()):
                    raise SourceError(
                        f"{u}: symbolic link to {real} leads out of the shard folder {path.parent}"
                    )
        self.urls = [os.path.abspath(u) for u in urls]

    def _samples(
        self, url: str, wanted: Callable[[str], bool] = lambda key: True
    ) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, extension -> bytes) for each sample of one shard, in tar order; only the
        members of samples whose key is `wanted` are read. A key whose members are split
        apart, or a repeated member, is refused: a reference must name one image."""
        limit = self.limit
        max_bytes = None if limit is None else limit.member_bytes

        def read_member(name: str) -> bool:
            split = split_member(name)
            return split is not None and wanted(split[0])

        seen: set[str] = set()
        key: str | None = None
        members: dict[str, bytes] = {}
        try:
            for m in iter_tar_members(url, read_member, max_bytes=max_bytes, compressed=True):
                split = split_member(m.name)
                if split is None:
                    continue
                name, ext = split
                if name != key:
                    if key is not None and wanted(key):
                        yield key, members
                    if name in seen:
                        raise SourceError(
                            f"{url}: sample {name!r} appears twice (its members are not "
                            "next to each other)"
                        )
                    seen.add(name)
                    key, members = name, {}
                if not wanted(name):
                    continue
                if ext in members:
                    raise SourceError(f"{url}: sample {name!r} has two .{ext} members")
                if m.too_large:
                    assert limit is not None
                    raise SourceError(
                        f"{url}: member {m.name} declares {m.size} bytes, more than an "
                        f"image of at most {limit.describe()} can need: not read"
                    )
                members[ext] = m.data or b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"{url}: unreadable shard: {exc}") from None
        if key is not None and wanted(key):
            yield key, members

    def iter_images(self, mask: str | None = None) -> Iterator[SourceImage]:
        for url in self.urls:
            for key, members in self._samples(url):
                where = f"{url}#{key}"
                if "cls" not in members:
                    raise SourceError(f"{where}: sample has no .cls label")
                image_ext = next((e for e in MEMBER_ORDER if e in members), None)
                if image_ext is None:
                    raise SourceError(f"{where}: sample has no image member")
                try:
                    label = members["cls"].decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise SourceError(f"{where}: the .cls label is not UTF-8 text") from None
                self._check(members[image_ext], where)
                mask_data = None
                if mask is not None:
                    if mask not in members:
                        raise SourceError(f"{url}: sample {key!r} has no mask member {key}.{mask}")
                    mask_data = members[mask]
                    self._check(mask_data, f"{where}.{mask}")
                yield SourceImage(where, label, members[image_ext], mask_data)

    def read(self, reference: str, mask: str | None = None) -> bytes:
        url = next((u for u in self.urls if reference.startswith(u + "#")), None)
        if url is None:
            raise SourceError(f"{reference}: not a shard of {self.pattern}")
        key = reference[len(url) + 1 :]
        for _, members in self._samples(url, lambda k: k == key):
            if mask is not None:
                if mask in members:
                    return members[mask]
                raise SourceError(f"{reference}: the sample has no mask member .{mask}")
            ext = next((e for e in MEMBER_ORDER if e in members), None)
            if ext is not None:
                return members[ext]
        raise SourceError(f"{reference}: no such sample")
