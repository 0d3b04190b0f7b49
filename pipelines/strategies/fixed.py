"""A fixed-count build: `count_per_class` samples of every class, in one round."""

from __future__ import annotations

from synthgen.pipelines.session import RoundOutcome
from synthgen.pipelines.strategies.base import Strategy
from synthgen.schemas.manifest import PlanRound


class FixedCount(Strategy):
    _done = False  # set on the instance once its one round is observed

    def next_round(self) -> PlanRound | None:
        return None if self._done else PlanRound(round=0)

    def observe(self, outcome: RoundOutcome) -> None:
        self._done = True
