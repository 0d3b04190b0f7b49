"""The recipe: what a build makes. Validated, frozen, hashed."""

from __future__ import annotations

import re
from collections import Counter
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.balance import BalanceSpec
from synthgen.schemas.recipe.checks import ChecksSpec
from synthgen.schemas.recipe.classes import ClassSpec, SlotValues
from synthgen.schemas.recipe.common import (
    MAX_COUNT_PER_CLASS,
    MAX_PLANNED_SAMPLES,
    Slug,
    _Frozen,
    shown_url,
    url_problem,
    utf8_problem,
)
from synthgen.schemas.recipe.conditioning import ConditioningSpec
from synthgen.schemas.recipe.fields import HashOmit
from synthgen.schemas.recipe.hashing import digest, hashed_fields
from synthgen.schemas.recipe.model import AdapterSpec, ModelSpec
from synthgen.schemas.recipe.output import OutputSpec, output_media_problem
from synthgen.schemas.recipe.safety import SafetySpec, blocklist_match
from synthgen.schemas.recipe.sampling import SamplingSpec
from synthgen.schemas.recipe.scoring import ScoringSpec
from synthgen.schemas.recipe.sources import ReferenceSpec
from synthgen.schemas.recipe.validation import ValidationSpec
from synthgen.schemas.templates import (
    MAX_CHECKED_EXPANSIONS,
    count_expansions,
    iter_expansions,
    slot_values,
)


class Recipe(_Frozen):
    """A build recipe. Relative paths resolve against the recipe file's folder."""

    name: Slug = Field(description="the corpus's name: in every key and in the manifest")
    seed: int = Field(
        default=0, ge=0, lt=2**63, description="every sample's seed derives from it and its key"
    )
    model: ModelSpec
    sampling: SamplingSpec = SamplingSpec()
    classes: list[ClassSpec] = Field(min_length=1)
    count_per_class: int | None = Field(default=None, ge=1, le=MAX_COUNT_PER_CLASS)
    scoring: ScoringSpec
    checks: ChecksSpec = ChecksSpec()
    validation: ValidationSpec = ValidationSpec()
    balance: BalanceSpec | None = None
    reference: Annotated[ReferenceSpec | None, HashOmit.IF_EMPTY] = Field(
        default=None,
        description="real images to measure against (metrics, near copies); in a balancing "
        "build the balance source is the default",
    )
    eval_set: Annotated[ReferenceSpec | None, HashOmit.IF_EMPTY] = Field(
        default=None, description="evaluation images no sample may copy (contamination)"
    )
    conditioning: Annotated[ConditioningSpec | None, HashOmit.IF_EMPTY] = Field(
        default=None,
        description="image conditioning (img2img, inpaint, ControlNet, IP-Adapter, or a mode "
        "plug-in); null: text only",
    )
    output: OutputSpec = OutputSpec()
    safety: SafetySpec = SafetySpec()
    usage: str | None = Field(
        default=None,
        max_length=10_000,
        description="what the corpus may be used for; recorded in the manifest and the report",
    )
    batch_size: Annotated[int, HashOmit.ALWAYS] = Field(default=8, ge=1, le=4096)
    slots: Annotated[dict[str, SlotValues], HashOmit.IF_DEFAULT] = Field(
        default_factory=dict,
        description="values of the prompt templates' `{slot}`s, by slot name (a class's own "
        "`slots` come first); one value per sample, chosen from (seed, key)",
    )
    adapters: Annotated[list[AdapterSpec], HashOmit.IF_DEFAULT] = Field(
        default_factory=list,
        max_length=16,
        description="LoRAs (weight `scale`) and textual-inversion embeddings, every class",
    )

    @field_validator("slots")
    @classmethod
    def _slot_names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in v:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name == "class":
                raise ValueError(
                    f"slot {name!r}: a slot name is lower-case letters, digits and _ "
                    "(`class` is the class name)"
                )
        return v

    @model_validator(mode="after")
    def _count_or_balance(self) -> Recipe:
        if self.count_per_class is None and self.balance is None:
            raise ValueError("count_per_class: required unless the recipe has a balance block")
        return self

    @model_validator(mode="after")
    def _media_fits_output(self) -> Recipe:
        """A video format only for clips, sizes the format can encode, scoring frames (other
        than the default 4) only for clips."""
        s = self.sampling
        problem = output_media_problem(self.output, s.num_frames, s.width, s.height)
        if problem:
            raise ValueError(problem)
        if s.num_frames is None and self.scoring.frames != 4:
            raise ValueError("scoring.frames: only for clips (sampling.num_frames is not set)")
        return self

    @model_validator(mode="after")
    def _conditioning_classes(self) -> Recipe:
        names = {c.name for c in self.classes}
        if self.conditioning is not None:
            unknown = sorted(set(self.conditioning.per_class) - names)
            if unknown:
                raise ValueError(
                    f"conditioning.per_class: {', '.join(unknown)} is not one of the classes"
                )
            for c in self.classes:
                spec = self.conditioning.for_class(c.name)
                if (
                    spec.mode == "ip_adapter"
                    and spec.source is None
                    and (spec.ip_adapter is None or spec.ip_adapter.image is None)
                ):
                    raise ValueError(
                        f"conditioning: class {c.name!r} has no image prompt: give a `source` "
                        "of images or an `ip_adapter.image` (for it, under `per_class`)"
                    )
        balance = self.balance
        if balance is not None and balance.uses_img2img:
            if self.conditioning is not None:
                raise ValueError(
                    "balance.conditioning img2img conditions top-ups on the balance source; "
                    "remove the `conditioning` block (or use balance.conditioning: text)"
                )
        elif balance is not None and balance.strength is not None:
            raise ValueError("balance.strength: only for balance.conditioning img2img")
        return self

    @model_validator(mode="after")
    def _reference_for_its_checks(self) -> Recipe:
        has_reference = self.reference is not None or self.balance is not None
        if self.checks.near_copy is not None and not has_reference:
            raise ValueError("checks.near_copy: needs a `reference` (or `balance`) block")
        if self.checks.contaminated is not None and self.eval_set is None:
            raise ValueError("checks.contaminated: needs an `eval_set` block")
        if self.validation.metrics and not has_reference:
            raise ValueError("validation.metrics: needs a `reference` (or `balance`) block")
        return self

    @model_validator(mode="after")
    def _unique_classes(self) -> Recipe:
        ids = Counter(str(c.id) for c in self.classes)
        names = Counter(c.name for c in self.classes)
        for what, seen in (("id", ids), ("name", names)):
            dupes = sorted(v for v, n in seen.items() if n > 1)
            if dupes:
                raise ValueError(f"classes: duplicate class {what}: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _bounded_total(self) -> Recipe:
        if self.count_per_class is not None:
            total = self.count_per_class * len(self.classes)
            if total > MAX_PLANNED_SAMPLES:
                raise ValueError(
                    f"count_per_class: {self.count_per_class} x {len(self.classes)} classes = "
                    f"{total} planned samples, over the maximum of {MAX_PLANNED_SAMPLES}"
                )
        return self

    @model_validator(mode="after")
    def _no_blocked_prompt(self) -> Recipe:
        """Every prompt a template can expand to is checked (and every template resolves)."""
        blocklist = self.safety.blocklist
        budget = MAX_CHECKED_EXPANSIONS
        for c in self.classes:
            for prompt in c.prompts:
                try:
                    choices = slot_values(prompt, c.name, c.slots, self.slots)
                except KeyError as exc:
                    raise ValueError(
                        f"classes: class {c.name!r}, prompt {prompt!r}: slot {{{exc.args[0]}}} "
                        "has no values (give them in the class's or the recipe's `slots`)"
                    ) from None
                if not blocklist:
                    continue
                budget -= count_expansions(choices)
                if budget < 0:
                    raise ValueError(
                        f"classes: class {c.name!r}, prompt {prompt!r}: the templates expand to "
                        f"more than {MAX_CHECKED_EXPANSIONS} prompts, too many to check against "
                        "safety.blocklist; use fewer slot values"
                    )
                for expanded in iter_expansions(prompt, choices):
                    term = blocklist_match(expanded, blocklist)
                    if term is not None:
                        shown = expanded if expanded == prompt else f"{expanded} (from {prompt})"
                        raise ValueError(
                            f"classes: class {c.name!r}, prompt {shown!r} matches "
                            f"safety.blocklist entry {term!r}; it is refused before generation"
                        )
        return self

    @model_validator(mode="after")
    def _unique_adapters(self) -> Recipe:
        for c in self.classes:
            paths = [a.path for a in (*self.adapters, *c.adapters)]
            dupes = sorted({p for p in paths if paths.count(p) > 1})
            if dupes:
                raise ValueError(f"classes: class {c.name!r}: adapter listed twice: {dupes[0]}")
        return self

    @model_validator(mode="after")
    def _every_string_checked(self) -> Recipe:
        # One walk over every string of the recipe (dict keys included). Each must be UTF-8
        # text (prompts are checked per class, naming it; this catches the rest, the negative
        # prompt included, before a tokenizer or writer meets it). A value that is a URL (a
        # source, a model path) must carry no credentials or query: refused without echoing
        # it, before it is hashed, written into a manifest or named in a message.
        stack: list[tuple[str, Any, bool]] = [("", self.model_dump(), False)]
        while stack:
            where, value, is_key = stack.pop()
            if isinstance(value, str):
                problem = utf8_problem(value)
                if problem:
                    raise ValueError(f"{where}: {problem}")
                problem = None if is_key else url_problem(value)
                if problem:
                    raise ValueError(f"{where}: {shown_url(value)}: {problem}")
            elif isinstance(value, dict):
                stack += [(f"{where}.{k}".lstrip("."), v, False) for k, v in value.items()]
                stack += [(f"{where} key", k, True) for k in value if isinstance(k, str)]
            elif isinstance(value, list | tuple):
                stack += [(f"{where}.{i}", v, False) for i, v in enumerate(value)]
        return self

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of every field that affects the corpus.

        `batch_size` (Beam batching) is left out: it changes how work is grouped, never what
        is made. `model.compute_batch` and `scoring.batch_size` are in: they fix the shape
        of every model call, and float rounding depends on that shape. Optional fields
        added later are left out while unused (their `HashOmit` marker), so existing builds
        still resume and extend.
        """
        data = hashed_fields(self)
        # the scorers' compute shape, however it was given (by default the Beam batch)
        data["scoring"]["batch_size"] = self.scoring_batch
        return digest(data)

    @property
    def scoring_batch(self) -> int:
        """The model scorers' fixed compute batch: `scoring.batch_size`, else `batch_size`."""
        return self.scoring.batch_size or self.batch_size

    @cached_property
    def classes_by_id(self) -> dict[int, ClassSpec]:
        """Class id -> class, built once per recipe (lookups stay O(1) with many classes)."""
        return {c.id: c for c in self.classes}

    def class_by_id(self, class_id: int) -> ClassSpec:
        return self.classes_by_id[class_id]
