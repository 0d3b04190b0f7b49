"""Prompt templates: `{slot}` placeholders filled from value lists. Pure text, no I/O.

A class prompt may name slots, e.g. `"a photo of a {class}, {background}, {lighting}"`.
`{class}` is the class's name; every other slot takes its values from the class's own
`slots` or, failing that, the recipe's `slots`. A placeholder is `{` + a lower-case name +
`}`; any other brace is literal text, and slot values are inserted as they are (never
expanded again). Which template and which values a sample gets is decided in
`synthgen.generators.templates` from (recipe seed, key) alone.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence

SLOT_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
CLASS_SLOT = "class"
# Every expansion is checked against the safety blocklist when the recipe is read: a recipe
# whose templates expand to more prompts than this (with a blocklist) is refused.
MAX_CHECKED_EXPANSIONS = 200_000


def template_slots(template: str) -> list[str]:
    """The slot names a template uses, in order of first use."""
    return list(dict.fromkeys(SLOT_RE.findall(template)))


def expand(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{slot}` replaced by `values[slot]` (one pass)."""
    return SLOT_RE.sub(lambda m: values[m.group(1)], template)


def slot_values(
    template: str,
    class_name: str,
    class_slots: Mapping[str, Sequence[str]],
    recipe_slots: Mapping[str, Sequence[str]],
) -> dict[str, list[str]]:
    """Slot name -> the values it may take in `template` (class slots before recipe slots).

    Raises KeyError naming the first slot that has no values.
    """
    out: dict[str, list[str]] = {}
    for name in template_slots(template):
        if name == CLASS_SLOT:
            out[name] = [class_name]
        elif name in class_slots:
            out[name] = list(class_slots[name])
        elif name in recipe_slots:
            out[name] = list(recipe_slots[name])
        else:
            raise KeyError(name)
    return out


def count_expansions(choices: Mapping[str, Sequence[str]]) -> int:
    n = 1
    for values in choices.values():
        n *= len(values)
    return n


def iter_expansions(template: str, choices: Mapping[str, Sequence[str]]) -> Iterator[str]:
    """Every prompt `template` can expand to with `choices` (slot -> values)."""
    names = list(choices)
    for combo in itertools.product(*(choices[n] for n in names)):
        yield expand(template, dict(zip(names, combo, strict=True)))
