"""What a scorer declares about each column it writes: the contract between scorers, checks,
expectations, the Parquet schema and the manifest."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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

    @property
    def is_vector(self) -> bool:
        return self.dim is not None


def safe_name(model_name: str) -> str:
    """A model name made identifier-safe for column names (`ViT-B/32` -> `vit_b_32`)."""
    return re.sub(r"[^a-z0-9]+", "_", model_name.lower()).strip("_")
