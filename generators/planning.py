"""Planning: recipe -> GenerationRequests. Keys, seeds and shards are pure functions.

Nothing here needs the whole plan in memory: `plan_shard` computes one shard's requests
straight from the shard id, `iter_plan` streams them all in order, and `shard_ids` /
`count_planned` size a plan without making a request — O(classes + shard size) memory,
whatever the counts. `plan` (the list) remains for callers that want it.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence

from synthgen.generators.templates import pick, resolve_sample
from synthgen.schemas.manifest import ClassFocus
from synthgen.schemas.recipe import MAX_PLANNED_SAMPLES, ClassSpec, Recipe
from synthgen.schemas.records import KEY_PATTERN, GenerationRequest

# A round's focus (`PlanRound.focus`): class id -> where its samples are drawn.
Focus = Mapping[int, ClassFocus]


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


class _Layout:
    """Where each (class, index) falls in the interleaved order, without listing the order.

    The order is index-major, class-minor: level `i` holds, by class id, every class `c`
    with `lo[c] <= i < hi[c]`. Membership changes only at the `lo`/`hi` values, so the
    order is a few segments, each a run of levels sharing one list of classes. Memory and
    set-up are O(classes); finding a position is O(log(levels) * log(classes)).
    """

    def __init__(self, lo: dict[int, int], hi: dict[int, int]):
        self.lo, self.hi = lo, hi
        self.total = sum(hi[c] - lo[c] for c in hi)
        self.breaks = sorted({*lo.values(), *hi.values()})  # segment borders
        self._lo_sorted = sorted(lo.values())
        self._lo_prefix = [0, *itertools.accumulate(self._lo_sorted)]
        self._hi_sorted = sorted(hi.values())
        self._hi_prefix = [0, *itertools.accumulate(self._hi_sorted)]
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for c in hi:
            self._starts.setdefault(lo[c], []).append(c)
            self._ends.setdefault(hi[c], []).append(c)

    @staticmethod
    def of(counts: dict[int, int], start: dict[int, int] | None) -> _Layout:
        start = start or {}
        # As the old list-building planner did: levels begin at the smallest given start,
        # so a class absent from `start` begins there too (0 when `start` is empty).
        floor = min(start.values(), default=0)
        lo: dict[int, int] = {}
        hi: dict[int, int] = {}
        for c, n in counts.items():
            first = max(start.get(c, 0), floor)
            if n > first:
                lo[c], hi[c] = first, n
        return _Layout(lo, hi)

    def _sum_min(self, level: int, ordered: list[int], prefix: list[int]) -> int:
        """sum over classes of min(level, value)."""
        k = bisect.bisect_right(ordered, level)
        return prefix[k] + level * (len(ordered) - k)

    def before(self, level: int) -> int:
        """How many positions come before level `level`."""
        return self._sum_min(level, self._hi_sorted, self._hi_prefix) - self._sum_min(
            level, self._lo_sorted, self._lo_prefix
        )

    def level_of(self, position: int) -> int:
        """The level holding `position` (0 <= position < total)."""
        low, high = self.breaks[0], self.breaks[-1]  # before(low) == 0 <= position
        while high - low > 1:  # invariant: before(low) <= position < before(high)
            mid = (low + high) // 2
            if self.before(mid) <= position:
                low = mid
            else:
                high = mid
        return low

    def walk(self, position: int) -> Iterator[tuple[int, int]]:
        """(class id, index) pairs in order, from `position` on.

        One scan of the classes finds those present at the first level; after that the
        list of present classes is updated only where a class starts or ends.
        """
        if position >= self.total:
            return
        level = self.level_of(position)
        skip = position - self.before(level)
        present = sorted(c for c in self.hi if self.lo[c] <= level < self.hi[c])
        end = self.breaks[-1]
        while level < end:
            border = self.breaks[bisect.bisect_right(self.breaks, level)]
            for lvl in range(level, border):
                for class_id in present[skip:] if skip else present:
                    yield class_id, lvl
                skip = 0
            level = border
            for c in self._ends.get(level, ()):
                del present[bisect.bisect_left(present, c)]
            for c in self._starts.get(level, ()):
                bisect.insort(present, c)


def _counts_for(recipe: Recipe, counts: dict[int, int] | None) -> dict[int, int]:
    if counts is None:
        if recipe.count_per_class is None:
            raise ValueError("a balance recipe is planned per round, with explicit counts")
        counts = {c.id: recipe.count_per_class for c in recipe.classes}
    unknown = sorted(set(counts) - set(recipe.classes_by_id))
    if unknown:
        raise ValueError(f"counts: class ids {unknown[:10]} are not among the recipe's classes")
    return counts


def _layout(recipe: Recipe, counts: dict[int, int] | None, start: dict[int, int] | None) -> _Layout:
    layout = _Layout.of(_counts_for(recipe, counts), start)
    if layout.total > MAX_PLANNED_SAMPLES:
        raise ValueError(
            f"counts: {layout.total} planned samples, over the maximum of {MAX_PLANNED_SAMPLES}"
        )
    return layout


def count_planned(
    recipe: Recipe, counts: dict[int, int] | None = None, start: dict[int, int] | None = None
) -> int:
    """How many requests `plan` would make, without making them."""
    return _layout(recipe, counts, start).total


def shard_ids(
    recipe: Recipe,
    counts: dict[int, int] | None = None,
    start: dict[int, int] | None = None,
    shard_offset: int = 0,
    focus: Focus | None = None,
) -> range:
    """The shard ids the plan fills, in order (empty when nothing is planned)."""
    total = count_planned(recipe, counts, start)
    return range(shard_offset, shard_offset + math.ceil(total / recipe.output.shard_size))


def _weighted(recipe_seed: int, key: str, weights: Sequence[float]) -> int:
    """A stable choice in range(len(weights)), each index with its weight's share."""
    digest = hashlib.sha256(f"synthgen-focus-prompt:{recipe_seed}:{key}".encode()).digest()
    draw = int.from_bytes(digest[:8], "little") / 2.0**64 * sum(weights)
    for i, total in enumerate(itertools.accumulate(weights)):
        if draw < total:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)


def _text_share(recipe: Recipe) -> float | None:
    """The share of a balancing build's samples left text-only; None when none starts from
    a real image."""
    balance = recipe.balance
    if balance is None or not balance.uses_img2img:
        return None
    return balance.mix.get("text", 0.0)


def _focused(
    recipe: Recipe, cls: ClassSpec, key: str, focus: ClassFocus
) -> tuple[ClassSpec, tuple[str, str] | None]:
    """The class as this sample sees it (its prompt template chosen by the focus weights)
    and the real image it starts from (a focus source, when the sample is image-conditioned:
    the draw `generators.conditioning.pick_mode` makes on the worker)."""
    from synthgen.generators.conditioning import pick_mode

    if focus.prompt_weights is not None and len(focus.prompt_weights) == len(cls.prompts):
        chosen = cls.prompts[_weighted(recipe.seed, key, focus.prompt_weights)]
        cls = cls.model_copy(update={"prompts": [chosen]})  # `resolve_sample` takes it
    text_share = _text_share(recipe)
    if not focus.sources or text_share is None or pick_mode(recipe.seed, key, text_share):
        return cls, None
    ref, sha = focus.sources[pick(recipe.seed, key, "focus-source", len(focus.sources))]
    return cls, (ref, sha)


def _request(
    recipe: Recipe, class_id: int, index: int, shard: int, focus: Focus | None = None
) -> GenerationRequest:
    cls = recipe.class_by_id(class_id)
    key = sample_key(recipe.name, cls.name, index)
    seed = sample_seed(recipe.seed, key)
    source = None
    if focus is not None and class_id in focus:
        cls, source = _focused(recipe, cls, key, focus[class_id])
    resolved = resolve_sample(recipe, cls, key, seed)  # template, slots, per-class settings
    return GenerationRequest(
        key=key,
        shard=shard,
        index=index,
        class_label=cls.id,
        class_name=cls.name,
        prompt=resolved.prompt,
        negative_prompt=resolved.negative_prompt,
        seed=seed,
        prompt_template=resolved.template,
        prompt_slots=resolved.slots_json,
        sample_steps=resolved.steps,
        sample_guidance_scale=resolved.guidance_scale,
        # a focused image-conditioned sample names its source; the worker's
        # `assign_sources` keeps a named source and fills in the mode and its settings
        conditioning_source=None if source is None else source[0],
        conditioning_source_sha256=None if source is None else source[1],
    )


def plan_shard(
    recipe: Recipe,
    shard: int,
    counts: dict[int, int] | None = None,
    start: dict[int, int] | None = None,
    shard_offset: int = 0,
    focus: Focus | None = None,
) -> list[GenerationRequest]:
    """The requests of one shard, computed from its id alone (an empty list past the end).

    Equal to `[r for r in plan(...) if r.shard == shard]`, in O(classes + shard size).
    """
    layout = _layout(recipe, counts, start)
    size = recipe.output.shard_size
    first = (shard - shard_offset) * size
    if first < 0:
        return []
    pairs = itertools.islice(layout.walk(first), size)
    return [_request(recipe, c, i, shard, focus) for c, i in pairs]


def iter_plan(
    recipe: Recipe,
    counts: dict[int, int] | None = None,
    start: dict[int, int] | None = None,
    shard_offset: int = 0,
    focus: Focus | None = None,
) -> Iterator[GenerationRequest]:
    """Every sample of the build (or of one balancing round), in shard order, streamed.

    `counts` overrides `count_per_class` per class id; a balancing round plans indices from
    `start` up to `counts` into new shards numbered from `shard_offset`, so earlier rounds'
    keys, seeds and shards never change. Order: index-major, class-minor (by id), so each
    shard, a consecutive slice of `output.shard_size` requests, mixes classes evenly.
    `focus` (a feedback round's) chooses a class's prompt templates and source images from
    (recipe seed, key) among what a probe found hard.
    """
    layout = _layout(recipe, counts, start)
    size = recipe.output.shard_size
    for position, (class_id, index) in enumerate(layout.walk(0)):
        yield _request(recipe, class_id, index, shard_offset + position // size, focus)


def plan(
    recipe: Recipe,
    counts: dict[int, int] | None = None,
    start: dict[int, int] | None = None,
    shard_offset: int = 0,
    focus: Focus | None = None,
) -> list[GenerationRequest]:
    """`list(iter_plan(...))`, for callers that want the whole (bounded) list."""
    return list(iter_plan(recipe, counts, start, shard_offset, focus))


def check_unique_keys(requests: Sequence[GenerationRequest]) -> None:
    seen: set[str] = set()
    for r in requests:
        if r.key in seen:
            raise ValueError(f"duplicate sample key {r.key!r} in plan")
        seen.add(r.key)


def padding_waste(recipe: Recipe) -> list[str]:
    """What share of the model work a recipe's batch sizes spend on padding, per step that
    pads (empty: nothing pads). Calls are fixed-shape, so a short call is padded to its size:

    - generation: a full shard (`output.shard_size`) is cut into calls of
      `model.compute_batch` (per group of requests sharing their call parameters);
    - scoring: a shard's scoring chunks of `batch_size` images are scored in calls of the
      scorers' shape (`scoring.batch_size`, by default `batch_size`: no padding).
    """
    notes = []
    size, cb = recipe.output.shard_size, recipe.model.compute_batch
    computed = math.ceil(size / cb) * cb
    if computed > size:
        notes.append(
            f"model.compute_batch {cb} against output.shard_size {size}: "
            f"{100 * (computed - size) / computed:.0f} % of each full shard's generation is "
            f"padding (a shard size that is a multiple of {cb} pads nothing)"
        )
    chunk, shape = recipe.batch_size, recipe.scoring_batch
    per_shard = [min(chunk, size - start) for start in range(0, size, chunk)]
    scored = sum(math.ceil(n / shape) * shape for n in per_shard)
    if scored > size:
        notes.append(
            f"scoring.batch_size {shape} against batch_size {chunk} and output.shard_size "
            f"{size}: {100 * (scored - size) / scored:.0f} % of the scorers' work is padding"
        )
    return notes
