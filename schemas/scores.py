"""What a scorer declares about each column it writes: the contract between scorers, checks,
expectations, the Parquet schema and the manifest."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGE_EMBEDDING = "image_embedding"
"""The role of a vector column holding each image's normalised embedding: near-copy and
semantic-duplicate checks, metrics and the report find it by this role, not by a scorer."""


class ScoreColumn(BaseModel):
    """One score column. Scalars are float32; `dim` makes it a fixed-size float32 vector.

    For a vector column, `minimum`/`maximum` bound every element.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    scorer: str = Field(description="the scorer plug-in that writes it")
    minimum: float | None = Field(default=None, description="smallest valid value (inclusive)")
    maximum: float | None = Field(default=None, description="largest valid value (inclusive)")
    dim: int | None = Field(default=None, ge=1, description="vector length; None for a scalar")
    checks: dict[str, Literal["above", "below"]] = Field(
        default_factory=dict,
        description="named recipe checks this column backs, with the side of the threshold "
        "that passes (e.g. brightness backs dark: above, light: below)",
    )
    description: str = ""
    role: str | None = Field(
        default=None,
        description="what consumers find the column by (`image_embedding`: the vector that "
        "near-copy checks, metrics and the report use)",
    )

    @model_validator(mode="before")
    @classmethod
    def _role_of_older_manifests(cls, data: Any) -> Any:
        # Manifests written before columns declared a role: the `clip_embedding` vector was
        # the image embedding.
        if (
            isinstance(data, dict)
            and "role" not in data
            and data.get("scorer") == "clip_embedding"
            and data.get("dim") is not None
        ):
            return {**data, "role": IMAGE_EMBEDDING}
        return data

    @property
    def is_vector(self) -> bool:
        return self.dim is not None


def safe_name(model_name: str) -> str:
    """A model name made identifier-safe for column names (`ViT-B/32` -> `vit_b_32`)."""
    return re.sub(r"[^a-z0-9]+", "_", model_name.lower()).strip("_")


def image_embedding_column(columns: Sequence[ScoreColumn]) -> str | None:
    """The name of the image-embedding vector column (the one with that role), if any."""
    return next((c.name for c in columns if c.is_vector and c.role == IMAGE_EMBEDDING), None)
