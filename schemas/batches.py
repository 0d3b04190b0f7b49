"""Fixed-shape batching: one pure helper for every model call that must not depend on batching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def padded_chunks(items: Sequence[T], n: int) -> Iterator[tuple[list[T], int]]:
    """Consecutive chunks of exactly `n` items, as (chunk, number of real items).

    A short last chunk is padded with copies of its last item, so a model always sees the
    same batch shape: float rounding then does not depend on how the work was batched.
    Callers keep the first `real` outputs of each chunk.
    """
    if n < 1:
        raise ValueError(f"chunk size must be at least 1, got {n}")
    for start in range(0, len(items), n):
        chunk = list(items[start : start + n])
        yield chunk + chunk[-1:] * (n - len(chunk)), len(chunk)
