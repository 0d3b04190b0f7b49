"""Planning: recipe -> GenerationRequests. Keys, seeds and shards are pure functions."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from synthgen.schemas.recipe import ClassSpec, Recipe
from synthgen.schemas.records import KEY_PATTERN, GenerationRequest


def sample_key(recipe_name: str, class_name: str, index: int) -> str:
    """`<recipe>-<class>-<index:06d>`: matches ^[a-z0-9_-]+$ and never holds a dot."""
    key = f"{recipe_name}-{class_name}-{index:06d}"
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid sample key {key!r}")
    return key


def sample_seed(recipe_seed: int, key: str) -> int:
    """A 63-bit seed from a stable hash of (recipe seed, key); no global RNG, no hash()."""
    digest = hashlib.sha256(f"synthgen-seed:{recipe_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def pick_prompt(cls: ClassSpec, seed: int) -> str:
    """The prompt template for a sample, chosen by its seed so it is reproducible."""
    return cls.prompts[seed % len(cls.prompts)]


def interleaved_order(
    counts: dict[int, int], start: dict[int, int] | None = None
) -> list[tuple[int, int]]:
    """(class_id, index) pairs, index in [start, count), ordered index-major, class-minor.

    Shards are consecutive slices of this order, so each shard mixes classes evenly.
    """
    start = start or {}
    order: list[tuple[int, int]] = []
    width = max(counts.values(), default=0)
    for index in range(min(start.values(), default=0), width):
        for class_id in sorted(counts):
            if start.get(class_id, 0) <= index < counts[class_id]:
                order.append((class_id, index))
    return order


def num_shards(total: int, shard_size: int) -> int:
    return max(1, math.ceil(total / shard_size))


def plan(
    recipe: Recipe,
    counts: dict[int, int] | None = None,
    start: dict[int, int] | None = None,
    shard_offset: int = 0,
) -> list[GenerationRequest]:
    """Every sample of the build (or of one balancing round), in shard order.

    `counts` overrides `count_per_class` per class id; a balancing round plans indices from
    `start` up to `counts` into new shards numbered from `shard_offset`, so earlier rounds'
    keys, seeds and shards never change.
    """
    if counts is None:
        if recipe.count_per_class is None:
            raise ValueError("a balance recipe is planned per round, with explicit counts")
        counts = {c.id: recipe.count_per_class for c in recipe.classes}
    requests: list[GenerationRequest] = []
    for position, (class_id, index) in enumerate(interleaved_order(counts, start)):
        cls = recipe.class_by_id(class_id)
        key = sample_key(recipe.name, cls.name, index)
        seed = sample_seed(recipe.seed, key)
        requests.append(
            GenerationRequest(
                key=key,
                shard=shard_offset + position // recipe.output.shard_size,
                index=index,
                class_label=cls.id,
                class_name=cls.name,
                prompt=pick_prompt(cls, seed),
                negative_prompt=recipe.sampling.negative_prompt,
                seed=seed,
            )
        )
    return requests


def check_unique_keys(requests: Sequence[GenerationRequest]) -> None:
    seen: set[str] = set()
    for r in requests:
        if r.key in seen:
            raise ValueError(f"duplicate sample key {r.key!r} in plan")
        seen.add(r.key)
