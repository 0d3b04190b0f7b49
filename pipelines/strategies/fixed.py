"""A fixed-count build: `count_per_class` samples of every class, in one round."""

from __future__ import annotations

from synthgen.pipelines.session import RoundOutcome
from synthgen.pipelines.strategies.base import Strategy
from synthgen.schemas.manifest import PlanRound


class FixedCount(Strategy):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._done = False

    def next_round(self) -> PlanRound | None:
        return None if self._done else PlanRound(round=0)

    def observe(self, outcome: RoundOutcome) -> None:
        self._done = True
