"""The scorer plug-ins that add columns to every sample."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from synthgen.schemas.recipe.common import Slug, _Frozen
from synthgen.schemas.recipe.fields import HashOmit, RecipePath


class ScorerSpec(_Frozen):
    """One scorer plug-in by name; `options` are checked by the scorer itself."""

    name: Slug
    options: dict[str, Any] = Field(default_factory=dict)


class ScoringSpec(_Frozen):
    """Scorers that add columns to every sample. CLIP-based ones share `clip_model`."""

    clip_model: RecipePath = Field(
        min_length=1, description="folder holding <name>.json + <name>.safetensors"
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="fixed compute batch of the model scorers (hashed); default: the recipe's "
        "`batch_size`, so a scoring call pads nothing",
    )
    scorers: list[ScorerSpec] = Field(
        default_factory=lambda: [ScorerSpec(name="clip"), ScorerSpec(name="image_stats")],
        min_length=1,
        description="scorer plug-ins in order; each writes the columns it declares",
    )
    frames: Annotated[int, HashOmit.IF_DEFAULT] = Field(
        default=4,
        ge=1,
        le=64,
        description="video builds: frames of each clip the scorers measure, evenly spaced, "
        "first and last included",
    )

    @field_validator("scorers")
    @classmethod
    def _unique_scorers(cls, v: list[ScorerSpec]) -> list[ScorerSpec]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scorer listed twice: {', '.join(dupes)}")
        return v
