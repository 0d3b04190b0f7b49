"""Content screening: safety concepts and the prompt blocklist."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.common import Slug, _Frozen


class SafetyConcept(_Frozen):
    """One concept prompt screened for; its family names the score column it feeds."""

    family: Slug
    prompt: str = Field(min_length=1, max_length=300)
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="cosine similarity above which an image shows the concept; null: the "
        "family's entry in `thresholds`, else `threshold`",
    )


# A starting list in the spirit of Stable Diffusion's own checker (whose concepts are kept as
# embeddings): calibrate the thresholds on the recipe's CLIP model before relying on them.
DEFAULT_SAFETY_CONCEPTS: tuple[SafetyConcept, ...] = tuple(
    SafetyConcept(family=family, prompt=prompt)
    for family, prompts in (
        ("sexual", ("sexual content", "nudity", "pornography", "a naked person")),
        ("violence", ("graphic violence", "gore", "blood and injuries", "a dead body")),
        ("hate", ("a hate symbol", "a swastika")),
        ("self_harm", ("self-harm", "a person cutting themselves")),
    )
    for prompt in prompts
)


class SafetySpec(_Frozen):
    """Content screening: concept prompts for the `safety_concepts` scorer, prompt blocklist.

    A prompt (class prompt) containing a `blocklist` entry (case-insensitive, as whole words)
    is refused when the recipe is read, before anything is generated.
    """

    concepts: list[SafetyConcept] = Field(
        default_factory=lambda: list(DEFAULT_SAFETY_CONCEPTS), max_length=1000
    )
    threshold: float = Field(
        default=0.3, ge=-1.0, le=1.0, description="default cosine similarity threshold"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="threshold per concept family (overrides `threshold`)"
    )
    blocklist: list[str] = Field(default_factory=list, max_length=10_000)

    @field_validator("blocklist")
    @classmethod
    def _non_empty_terms(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("blocklist entries must not be empty")
        return v

    @model_validator(mode="after")
    def _known_families(self) -> SafetySpec:
        families = {c.family for c in self.concepts}
        unknown = sorted(set(self.thresholds) - families)
        if unknown:
            raise ValueError(f"thresholds: no concept of family {', '.join(unknown)}")
        if any(not -1.0 <= t <= 1.0 for t in self.thresholds.values()):
            raise ValueError("thresholds: cosine similarities lie in [-1, 1]")
        return self

    def concept_threshold(self, concept: SafetyConcept) -> float:
        if concept.threshold is not None:
            return concept.threshold
        return self.thresholds.get(concept.family, self.threshold)


def blocklist_match(text: str, blocklist: list[str]) -> str | None:
    """The first blocklist entry found in `text` (case-insensitive, whole words), or None."""
    for term in blocklist:
        if re.search(rf"(?<!\w){re.escape(term.strip())}(?!\w)", text, re.IGNORECASE):
            return term
    return None
