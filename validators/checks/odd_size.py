"""Images whose size is not the size the recipe asked for."""

from __future__ import annotations

from synthgen.schemas.records import Sample
from synthgen.validators.base import Check


class OddSize(Check):
    name = "odd_size"

    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height

    def reason(self, sample: Sample) -> str | None:
        ok = (sample.width, sample.height) == (self.width, self.height)
        return None if ok else self.name
