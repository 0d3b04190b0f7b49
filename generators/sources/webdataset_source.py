"""WebDataset shards (a glob or brace pattern); labels from each sample's `.cls`."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

from synthgen.generators.sources.base import (
    Source,
    SourceError,
    SourceRecord,
    check_image,
    inside_root,
)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def expand_pattern(pattern: str) -> list[str]:
    import braceexpand

    urls: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        urls += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    return urls


class WebDatasetSource(Source):
    """Local shards only. Each is handed to webdataset as an absolute path, so no name is
    ever read as a `pipe:` or other URL scheme; a shard that is a symbolic link must resolve
    inside its own folder (the folder the pattern names), or it is refused by name.
    """

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

    def records(self) -> Iterator[SourceRecord]:
        import webdataset as wds

        ds = wds.WebDataset(
            self.urls, shardshuffle=False, handler=wds.reraise_exception, empty_check=False
        )
        try:
            for sample in ds:
                key = sample["__key__"]
                url = str(sample.get("__url__", ""))
                where = f"{url}#{key}"
                if "cls" not in sample:
                    raise SourceError(f"{where}: sample has no .cls label")
                image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
                if image_ext is None:
                    raise SourceError(f"{where}: sample has no image member")
                check_image(sample[image_ext], where)
                yield SourceRecord(where, sample["cls"].decode("utf-8").strip())
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.pattern}: unreadable shard: {exc}") from None
