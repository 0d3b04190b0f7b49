"""Strategies on their own: what each round plans given what earlier rounds produced.

No Beam, no model call: a round's outcome is a Parquet file per shard with the columns a
strategy reads (`class_label`, `status`), written here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.pipelines.output import BuildError
from synthgen.pipelines.resolve import resolve
from synthgen.pipelines.session import RoundOutcome
from synthgen.pipelines.strategies import Balance, FixedCount, strategy_for
from synthgen.pipelines.strategies.balance import accept_rate_bound, planning_rate, shown_below
from synthgen.schemas.manifest import PlanRound, ShardStats, shard_files
from synthgen.schemas.recipe import load_recipe
from tests.pipelines.test_balance import _balance_recipe, make_folder

# make_folder's source: zero 6, one 2, two 4 images -> target `max` = 6 each
BEFORE = {0: 6, 1: 2, 2: 4}


def _balance(tmp_path: Path, model_dir: Path, **balance: object) -> Balance:
    source = str(make_folder(tmp_path / "source"))
    recipe, base = load_recipe(_balance_recipe(tmp_path, model_dir, source, **balance))
    strategy = strategy_for(resolve(recipe, base))
    assert isinstance(strategy, Balance)
    strategy.prepare()
    return strategy


def _outcome(out: Path, plan_round: PlanRound, shards: dict[int, list[tuple[int, str]]]) -> Any:
    """A round that left `shards`: shard -> (class_label, status) per sample."""
    out.mkdir(parents=True, exist_ok=True)
    stats = []
    for shard, rows in shards.items():
        table = pa.table(
            {
                "class_label": pa.array([c for c, _ in rows], pa.int32()),
                "status": [s for _, s in rows],
            }
        )
        pq.write_table(table, out / shard_files(shard).parquet)
        stats.append(ShardStats.model_construct(shard=shard))
    return RoundOutcome(out, plan_round, stats, reused=[], generated_now=0, metrics={})


def test_fixed_count_plans_one_round() -> None:
    strategy = FixedCount.__new__(FixedCount)  # FixedCount reads nothing from its recipe
    first = strategy.next_round()
    assert first == PlanRound(round=0)
    assert strategy.next_round() == first  # pure until something is observed
    strategy.observe(RoundOutcome(Path("."), first, [], [], 0, {}))
    assert strategy.next_round() is None


def test_balance_plans_the_deficit_then_what_the_accept_rate_says(
    tmp_path: Path, model_dir: Path
) -> None:
    strategy = _balance(tmp_path, model_dir, overgenerate=1.0, max_rounds=4)
    try:
        assert strategy.before == BEFORE
        assert strategy.deficit == {0: 0, 1: 4, 2: 2}
        first = strategy.next_round()
        assert first is not None and first.round == 0
        # a class already at its target gets nothing; the others exactly their deficit
        assert first.quota == {1: 4, 2: 2}
        assert first.counts == {0: 0, 1: 4, 2: 2} and first.start == {0: 0, 1: 0, 2: 0}
        assert strategy.next_round() == first  # pure: asking again plans the same round

        # class one: 1 of 4 accepted (rate 0.25, 3 still needed -> 12 more); two: filled
        rows = [(1, "accepted"), (1, "rejected"), (1, "rejected"), (1, "rejected")]
        rows += [(2, "accepted"), (2, "accepted")]
        strategy.observe(_outcome(tmp_path / "out", first, {0: rows[:3], 1: rows[3:]}))
        second = strategy.next_round()
        assert second is not None and second.round == 1
        assert second.quota == {1: 3}
        assert second.start == {0: 0, 1: 4, 2: 2}
        assert second.counts == {0: 0, 1: 4 + 12, 2: 2}
        assert second.shard_offset == 2  # new keys go into new shards

        filled = [(1, "accepted")] * 3 + [(1, "rejected")] * 9
        strategy.observe(_outcome(tmp_path / "out", second, {2: filled}))
        assert strategy.next_round() is None
        assert [r.accepted for r in strategy.history] == [{"one": 1, "two": 2}, {"one": 3}]
    finally:
        strategy.close()


def test_balance_gives_up_only_on_a_class_shown_to_accept_under_the_minimum_rate(
    tmp_path: Path, model_dir: Path
) -> None:
    """0 of 4 is no evidence against a rate of 0.2 (a class accepting 20 % rejects four in a
    row 41 % of the time): the next round plans by the highest plausible rate instead; only
    once its top-ups put even that bound under the minimum is the build failed by name."""
    strategy = _balance(tmp_path, model_dir, overgenerate=1.0, min_accept_rate=0.2)
    try:
        first = strategy.next_round()
        assert first is not None
        rows = [(1, "rejected")] * 4 + [(2, "accepted")] * 2
        strategy.observe(_outcome(tmp_path / "out", first, {0: rows}))
        second = strategy.next_round()  # 0 of 4: bound 1 - 0.05 ** (1 / 4) = 0.527
        assert second is not None and second.quota == {1: 4}
        assert second.counts is not None
        assert second.counts[1] == 4 + math.ceil(4 / (1 - 0.05**0.25)) == 12
        rows = [(1, "rejected")] * 8  # 0 of 12: bound 0.221, still over 0.2
        strategy.observe(_outcome(tmp_path / "out", second, {1: rows}))
        third = strategy.next_round()
        assert third is not None and third.counts is not None
        assert third.counts[1] == 12 + math.ceil(4 / (1 - 0.05 ** (1 / 12))) == 31
        rows = [(1, "rejected")] * 19  # 0 of 31: bound 0.092
        strategy.observe(_outcome(tmp_path / "out", third, {2: rows}))
        with pytest.raises(BuildError, match=r"one \(short by 4: 0 of 31 generated"):
            strategy.next_round()
    finally:
        strategy.close()


def test_the_accept_rate_bound_is_clopper_pearsons() -> None:
    """The one-sided 95 % upper bound: closed form at 0 accepted, the beta quantile else
    (values from the binomial tail: P(X <= k | n, bound) = 0.05)."""
    from math import comb

    for k, n in ((0, 1), (0, 2), (0, 149), (1, 100), (3, 40), (39, 40)):
        p = accept_rate_bound(k, n)
        tail = sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert tail == pytest.approx(0.05, abs=1e-9), (k, n)
    assert accept_rate_bound(0, 0) == accept_rate_bound(5, 5) == 1.0
    assert not shown_below(0, 148, 0.02) and shown_below(0, 149, 0.02)
    assert not shown_below(0, 2, 0.02), "two rejected of two is no evidence"
    assert planning_rate(0, 0, 0.02) == 1.0 and planning_rate(1, 4, 0.02) == 0.25
    assert planning_rate(0, 4, 0.02) == pytest.approx(1 - 0.05**0.25)
    # 1 of 100 is not shown under 2 % (bound 0.047): planned, but never under the minimum
    assert not shown_below(1, 100, 0.02) and planning_rate(1, 100, 0.02) == 0.02
    assert planning_rate(0, 148, 0.02) == pytest.approx(0.02004, abs=1e-5)


def test_balance_stops_after_max_rounds(tmp_path: Path, model_dir: Path) -> None:
    strategy = _balance(tmp_path, model_dir, overgenerate=1.0, max_rounds=1)
    try:
        first = strategy.next_round()
        assert first is not None
        strategy.observe(_outcome(tmp_path / "out", first, {0: [(1, "rejected")] * 4}))
        assert strategy.next_round() is None  # one round allowed; finish reports the shortfall
    finally:
        strategy.close()
