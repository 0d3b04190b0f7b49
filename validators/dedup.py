"""Build-wide duplicate detection: pure functions the global Beam steps call.

The rule is order-free: of a group of duplicates, the sample with the smallest key is kept and
every other is rejected, so the outcome does not depend on workers, batches or resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def exact_duplicate_losers(keys: Iterable[str]) -> list[str]:
    """Keys sharing one image sha256: all but the smallest."""
    ordered = sorted(set(keys))
    return ordered[1:]


def hash_bands(phash_hex: str, max_distance: int) -> list[tuple[int, int]]:
    """(band index, band value) pairs: hashes within `max_distance` bits share at least one.

    By pigeonhole, splitting 64 bits into `max_distance + 1` bands means two hashes that differ
    in at most `max_distance` bits agree on some whole band.
    """
    value = int(phash_hex, 16)
    bands = max_distance + 1
    width = 64 // bands
    out = []
    for b in range(bands):
        lo = b * width
        hi = 64 if b == bands - 1 else lo + width
        out.append((b, (value >> lo) & ((1 << (hi - lo)) - 1)))
    return out


def hamming(a_hex: str, b_hex: str) -> int:
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()


def near_duplicate_losers(members: Iterable[tuple[str, str]], max_distance: int) -> Iterator[str]:
    """Within one band bucket of (key, phash): keys with a smaller-keyed near duplicate."""
    items = sorted(set(members))
    for i, (key, h) in enumerate(items):
        for _, other_h in items[:i]:
            if hamming(h, other_h) <= max_distance:
                yield key
                break


def quantile_threshold(values: Iterable[float], q: float, keep_above: bool = True) -> float:
    """The per-class cut of a check that rejects the worst q of a class: with n values, the
    floor(q * n) lowest fall strictly below it (`keep_above`), or for a check that keeps low
    scores, the floor(q * n) highest fall strictly above it."""
    import math

    if not keep_above:
        return -quantile_threshold([-v for v in values], q)
    arr = sorted(v for v in values if not math.isnan(v))
    k = math.floor(q * len(arr) + 1e-9)
    if k <= 0:
        return float("-inf")
    if k >= len(arr):
        return float("inf")
    return arr[k]
