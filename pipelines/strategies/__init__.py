"""Build strategies: what to plan next, round by round, and what a build adds to its manifest.

One strategy per file; `strategy_for(resolved)` picks the one a recipe asks for.
"""

from __future__ import annotations

from synthgen.pipelines.resolve import ResolvedRecipe
from synthgen.pipelines.strategies.balance import Balance
from synthgen.pipelines.strategies.base import Strategy
from synthgen.pipelines.strategies.fixed import FixedCount

__all__ = ["Balance", "FixedCount", "Strategy", "strategy_for"]


def strategy_for(resolved: ResolvedRecipe) -> Strategy:
    """A balancing build when the recipe has a `balance` block, else a fixed-count build."""
    if resolved.recipe.balance is not None:
        return Balance(resolved)
    return FixedCount(resolved)
