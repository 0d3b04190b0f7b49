"""The check interface: a check answers keep (None) or drop with a reason."""

from __future__ import annotations

from abc import ABC, abstractmethod

from synthgen.schemas.records import Sample


class Check(ABC):
    """One per-sample check. `name` is the key in the sample's `checks` provenance."""

    name: str

    @abstractmethod
    def reason(self, sample: Sample) -> str | None:
        """None to keep the sample, else a short reject reason (e.g. `clip_score_below_0.2`)."""
