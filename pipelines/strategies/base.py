"""The strategy interface: rounds of shards planned one after another, outcomes observed."""

from __future__ import annotations

from abc import ABC, abstractmethod

from synthgen.pipelines.resolve import ResolvedRecipe
from synthgen.pipelines.session import BuildSession, Finish, RoundOutcome
from synthgen.schemas.manifest import PlanRound


class Strategy(ABC):
    """Decides what a build makes, one round at a time.

    `prepare` reads and checks every input before any output exists; `next_round` is a pure
    function of the recipe, the inputs and the outcomes observed so far, so a resumed build
    replays the same rounds and reuses their finished shards; `finish` returns what the
    strategy adds to the manifest.
    """

    def __init__(self, resolved: ResolvedRecipe):
        self.resolved = resolved
        self.recipe = resolved.recipe

    def prepare(self) -> None:
        """Read and check the strategy's inputs (nothing is written yet)."""
        return None

    def begin(self, session: BuildSession) -> None:
        """Called once the output directory is open, before the first round."""
        return None

    @abstractmethod
    def next_round(self) -> PlanRound | None:
        """The next round to build, or None when the build has all it needs."""

    def observe(self, outcome: RoundOutcome) -> None:
        """Take note of what a round produced (accepted counts per class, ...)."""
        return None

    def finish(self, session: BuildSession) -> Finish:
        """What goes into the manifest beside the shards (written files, targets)."""
        return Finish()

    def close(self) -> None:
        """Release anything `prepare` opened (temporary files)."""
        return None
