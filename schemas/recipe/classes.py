"""The classes a recipe makes: id, name, prompt templates and per-class settings."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from synthgen.schemas.recipe.common import Slug, _Frozen, utf8_problem
from synthgen.schemas.recipe.fields import HashOmit
from synthgen.schemas.recipe.model import AdapterSpec

SlotValues = Annotated[list[Annotated[str, Field(max_length=1000)]], Field(min_length=1)]


class ClassSpec(_Frozen):
    id: int = Field(ge=0)
    name: Slug
    prompts: list[str] = Field(min_length=1)
    slots: Annotated[dict[str, SlotValues], HashOmit.IF_DEFAULT] = Field(
        default_factory=dict,
        description="values of this class's prompt `{slot}`s (before the recipe's `slots`)",
    )
    negative_prompt: Annotated[str | None, HashOmit.IF_DEFAULT] = Field(
        default=None, description="this class's negative prompt (null: sampling's)"
    )
    guidance_scale: Annotated[float | None, HashOmit.IF_DEFAULT] = Field(
        default=None, ge=0.0, le=50.0, description="this class's guidance (null: sampling's)"
    )
    steps: Annotated[int | None, HashOmit.IF_DEFAULT] = Field(
        default=None, ge=1, le=1000, description="this class's steps (null: sampling's)"
    )
    adapters: Annotated[list[AdapterSpec], HashOmit.IF_DEFAULT] = Field(
        default_factory=list, max_length=16, description="LoRAs / embeddings for this class only"
    )

    @field_validator("prompts")
    @classmethod
    def _non_empty_prompts(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for i, p in enumerate(v):
            if not p.strip():
                raise ValueError("prompt templates must not be empty")
            problem = utf8_problem(p)
            if problem:
                name = info.data.get("name", "?")
                raise ValueError(f"class {name!r}, prompt {i} ({p!r}): {problem}")
        return v
