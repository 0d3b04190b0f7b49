"""What a sample's prompt template and its class's settings resolve to: pure functions of
(recipe, class, key, seed), so every worker, resume and `regenerate` computes the same values.

1. the template: `seed % len(prompts)` (as before templates had slots)
2. each `{slot}`: one of its values, by a stable hash of (recipe seed, key, slot name)
3. negative prompt, steps: the class's own, else the recipe's
4. guidance: the class's own; else, with `sampling.guidance_jitter`, one of its levels by a
   stable hash of (recipe seed, key); else the recipe's
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from synthgen.schemas.recipe import ClassSpec, Recipe
from synthgen.schemas.records import canonical_json
from synthgen.schemas.templates import expand as expand_template
from synthgen.schemas.templates import iter_expansions, slot_values

__all__ = ["Resolved", "all_prompts", "pick", "resolve_sample"]


@dataclass(frozen=True)
class Resolved:
    """Every value a sample's generation depends on beyond its seed."""

    prompt: str
    template: str
    slots: dict[str, str]
    negative_prompt: str
    steps: int
    guidance_scale: float

    @property
    def slots_json(self) -> str:
        return canonical_json(self.slots)


def pick(recipe_seed: int, key: str, what: str, n: int) -> int:
    """A stable choice in range(n) for (recipe seed, key, what): sha256, never hash()."""
    digest = hashlib.sha256(f"synthgen-{what}:{recipe_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


def resolve_sample(recipe: Recipe, cls: ClassSpec, key: str, seed: int) -> Resolved:
    template = cls.prompts[seed % len(cls.prompts)]
    choices = slot_values(template, cls.name, cls.slots, recipe.slots)
    slots = {
        name: values[pick(recipe.seed, key, f"slot:{name}", len(values))]
        for name, values in choices.items()
    }
    s = recipe.sampling
    if cls.guidance_scale is not None:
        guidance = cls.guidance_scale
    elif s.guidance_jitter is not None:
        levels = s.guidance_jitter.values()
        guidance = levels[pick(recipe.seed, key, "guidance", len(levels))]
    else:
        guidance = s.guidance_scale
    return Resolved(
        prompt=expand_template(template, slots) if slots else template,
        template=template,
        slots=slots,
        negative_prompt=s.negative_prompt if cls.negative_prompt is None else cls.negative_prompt,
        steps=cls.steps if cls.steps is not None else s.steps,
        guidance_scale=float(guidance),
    )


def all_prompts(recipe: Recipe, cls: ClassSpec, limit: int | None = None) -> Iterator[str]:
    """Every prompt the class's templates can expand to (up to `limit`)."""
    n = 0
    for template in cls.prompts:
        choices = slot_values(template, cls.name, cls.slots, recipe.slots)
        for prompt in iter_expansions(template, choices):
            if limit is not None and n >= limit:
                return
            n += 1
            yield prompt
