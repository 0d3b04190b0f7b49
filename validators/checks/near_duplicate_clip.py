"""Clips of the build whose fingerprints (their frames' perceptual hashes) nearly match."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence

from synthgen.schemas.recipe import Recipe
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.base import BuildCheck, BuildFeatures
from synthgen.validators.dedup import hamming
from synthgen.validators.frames import HASH_HEX, fingerprint_frames, is_video


def clip_distance_limit(fingerprint: str, max_distance: int) -> int:
    """The Hamming distance (bits, whole fingerprint) within which two clips are near
    duplicates: `max_distance` bits per frame hash, over the fingerprint's frames."""
    return max_distance * fingerprint_frames(fingerprint)


def clip_bands(fingerprint: str, limit: int) -> list[tuple[int, int, int]]:
    """(fingerprint length, band index, band value): fingerprints of one length within
    `limit` bits share at least one band (pigeonhole over `limit + 1` bands)."""
    bits = 4 * len(fingerprint)
    value = int(fingerprint, 16) if fingerprint else 0
    bands = min(limit + 1, max(bits, 1))
    width = max(bits // bands, 1)
    out = []
    for b in range(bands):
        lo = b * width
        hi = bits if b == bands - 1 else lo + width
        out.append((len(fingerprint), b, (value >> lo) & ((1 << (hi - lo)) - 1)))
    return out


def near_duplicate_clip_losers(
    members: Iterable[tuple[str, str]], max_distance: int
) -> Iterator[str]:
    """Of (key, fingerprint) pairs: the keys with a smaller-keyed clip within the limit."""
    items = sorted(set(members))
    for i, (key, h) in enumerate(items):
        limit = clip_distance_limit(h, max_distance)
        for _, other in items[:i]:
            if len(other) == len(h) and hamming(h, other) <= limit:
                yield key
                break


class NearDuplicateClip(BuildCheck):
    """`checks.near_duplicate` in a video build: of clips whose fingerprints differ by at
    most `max_distance` bits per frame hash (each sampled frame's 64-bit perceptual hash,
    `validators.frames.clip_fingerprint`), all but the smallest key. Grouped by band of the
    fingerprint, as `near_duplicate` groups images."""

    name = "near_duplicate_clip"
    order = 20
    builtin = True
    duplicate = True

    def __init__(self, max_distance: int):
        self.max_distance = max_distance

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, columns: Sequence[ScoreColumn]
    ) -> NearDuplicateClip | None:
        spec = recipe.checks.near_duplicate
        return None if spec is None or not is_video(recipe) else cls(spec.max_distance)

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        if len(features.phash) < HASH_HEX:
            return ()  # no fingerprint (not computed): nothing to compare
        return clip_bands(features.phash, clip_distance_limit(features.phash, self.max_distance))

    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        members = [(f.key, f.phash) for f in features]
        losers = near_duplicate_clip_losers(members, self.max_distance)
        return [(key, self.name) for key in losers]
