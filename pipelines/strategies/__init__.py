"""Build strategies: what to plan next, round by round, and what a build adds to its manifest.

One strategy per file; `strategy_for(resolved)` picks the one a recipe asks for.
"""

from __future__ import annotations

from pathlib import Path

from synthgen.pipelines.resolve import ResolvedRecipe
from synthgen.pipelines.strategies.balance import Balance
from synthgen.pipelines.strategies.base import Strategy
from synthgen.pipelines.strategies.extend import Extend
from synthgen.pipelines.strategies.feedback import Feedback
from synthgen.pipelines.strategies.fixed import FixedCount

__all__ = ["Balance", "Extend", "Feedback", "FixedCount", "Strategy", "strategy_for"]


def strategy_for(resolved: ResolvedRecipe, extend: Path | None = None) -> Strategy:
    """Extending a parent build, balancing (a `balance` block: topping up, or feedback
    rounds), or a fixed-count build."""
    if extend is not None:
        return Extend(resolved, extend)
    balance = resolved.recipe.balance
    if balance is not None:
        return Feedback(resolved) if balance.strategy == "feedback" else Balance(resolved)
    return FixedCount(resolved)
