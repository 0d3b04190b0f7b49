"""Label-conditioned class balancing: top up a labelled dataset to target counts after filtering.

Rounds: each round plans, for every class still short, `need / accept rate * overgenerate`
new samples (new indices, so new keys and seeds, into new shards), builds them, and counts
what was accepted; an accepted surplus is rejected as `surplus`, so every class ends exactly at
its target. Every round is a pure function of the recipe, the source's label histogram and the
earlier rounds' (deterministic) results, so `--resume` replays it and reuses finished shards.
A class already at or above its target gets no synthetic samples; a source where every class
is there already makes a build with no shards, only the balanced index.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.generators.sources.base import PixelLimit, SourceRecord
from synthgen.generators.sources.open import SourceOptions, open_source, read_histogram
from synthgen.pipelines.estimate import targets_for
from synthgen.pipelines.output import BuildError
from synthgen.pipelines.session import BuildSession, Finish, RoundOutcome
from synthgen.pipelines.strategies.base import Strategy
from synthgen.schemas.manifest import BalanceInfo, BalanceRound, FileInfo, PlanRound, shard_files
from synthgen.schemas.recipe import BalanceSpec, Recipe
from synthgen.schemas.recipe.balance import GIVE_UP_CONFIDENCE
from synthgen.schemas.records import public_path, public_reference
from synthgen.storage.atomic import atomic_write
from synthgen.storage.hashing import file_sha256

logger = logging.getLogger(__name__)


def accept_rate_bound(accepted: int, attempted: int) -> float:
    """The highest accept rate that `accepted` of `attempted` leaves plausible: the one-sided
    Clopper-Pearson upper bound at GIVE_UP_CONFIDENCE (1.0 before any attempt)."""
    if attempted <= 0 or accepted >= attempted:
        return 1.0
    if accepted == 0:  # the bound's closed form: 1 - (1 - confidence) ** (1 / attempted)
        return 1.0 - (1.0 - GIVE_UP_CONFIDENCE) ** (1.0 / attempted)
    from scipy.special import betaincinv

    return float(betaincinv(accepted + 1, attempted - accepted, GIVE_UP_CONFIDENCE))


def planning_rate(accepted: int, attempted: int, min_rate: float) -> float:
    """The accept rate a class's next top-ups are planned by: 1.0 before any attempt; the
    measured one, but never under `min_rate` (a class not yet shown to accept less is
    planned as if it accepted that much: a round asks for at most need / min_rate); while
    it has accepted none, the highest rate its attempts leave plausible
    (`accept_rate_bound`), so each round asks for more without planning on nothing."""
    if attempted <= 0:
        return 1.0
    rate = accepted / attempted if accepted else accept_rate_bound(0, attempted)
    return max(rate, min_rate)


def shown_below(accepted: int, attempted: int, min_rate: float) -> bool:
    """Whether `accepted` of `attempted` shows (at GIVE_UP_CONFIDENCE) an accept rate under
    `min_rate`: the class is given up on."""
    return attempted > 0 and accept_rate_bound(accepted, attempted) < min_rate


# The balanced index lives in its own folder, so that `BUILD/*.parquet` (duckdb, polars, a
# glob handed to pyarrow) matches the shard files only; `_` keeps it out of pyarrow's (and
# Spark's) directory discovery too. Older builds wrote it beside the shards as
# `balanced.parquet`; the manifest's `balance.balanced_index` names where it is.
BALANCED_NAME = "_index/balanced.parquet"
LEGACY_BALANCED_NAME = "balanced.parquet"
# `BalanceInfo.source` is the source's description: its kind, then where it was read.
_SOURCE_KINDS = ("Parquet ", "image folder ", "WebDataset ")
BALANCED_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # "real" | "synthetic"
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("reference", pa.string()),  # real: a stable reference into the source
        pa.field("key", pa.string()),  # synthetic: the sample key
        pa.field("shard", pa.int32()),  # synthetic: its shard
    ]
)


class _RealRows:
    """Streams the source's rows into a temporary Parquet file (never all in memory)."""

    def __init__(self, path: Path, recipe: Recipe):
        self._names = {c.id: c.name for c in recipe.classes}
        self._writer = pq.ParquetWriter(str(path), BALANCED_SCHEMA)
        self._buffer: list[dict[str, Any]] = []

    def __call__(self, record: SourceRecord, class_id: int) -> None:
        self._buffer.append(
            {
                "source": "real",
                "label": class_id,
                "class_name": self._names[class_id],
                "reference": public_reference(record.reference),  # published: no local path
                "key": None,
                "shard": None,
            }
        )
        if len(self._buffer) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=BALANCED_SCHEMA))
            self._buffer = []

    def close(self) -> None:
        self.flush()
        self._writer.close()


def _accepted_by_class(out: Path, shards: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    accepted: dict[int, int] = {}
    attempted: dict[int, int] = {}
    for shard in shards:
        table = pq.read_table(out / shard_files(shard).parquet, columns=["class_label", "status"])
        for label, status in zip(
            table.column("class_label").to_pylist(), table.column("status").to_pylist(), strict=True
        ):
            attempted[label] = attempted.get(label, 0) + 1
            if status == "accepted":
                accepted[label] = accepted.get(label, 0) + 1
    return accepted, attempted


class Balance(Strategy):
    """Rounds of top-up generation until every class reaches its target (or cannot)."""

    def prepare(self) -> None:
        """Read the source once: its label histogram, and its rows for the balanced index."""
        spec = self._spec
        assert self.resolved.balance_source is not None
        if spec.trains_lora:
            from synthgen.pipelines.adapt import check_trainable

            check_trainable(self.resolved)
        s = self.recipe.sampling  # images declaring far more pixels are refused undecoded
        self.source = open_source(
            self.resolved.balance_source, SourceOptions.of(spec), PixelLimit(s.width, s.height)
        )
        self.names = {c.id: c.name for c in self.recipe.classes}
        self._tmp = tempfile.TemporaryDirectory(prefix="synthgen-balance-")
        self._real_path = Path(self._tmp.name) / "real.parquet"
        sink = _RealRows(self._real_path, self.recipe)
        try:
            self.before = read_histogram(self.source, self.recipe, sink)
        finally:
            sink.close()
        self.targets = targets_for(spec, self.recipe, self.before)
        self.deficit = {c: max(0, self.targets[c] - self.before[c]) for c in self.before}
        logger.info(
            "balance: source %s has %s; deficit %s",
            self.source.description,
            self.before,
            self.deficit,
        )
        self.accepted = {c: 0 for c in self.before}
        self.attempted = {c: 0 for c in self.before}
        self.shard_offset = 0
        self.history: list[BalanceRound] = []
        self._last: PlanRound | None = None

    def begin(self, session: BuildSession) -> None:
        """With `adapt: lora`: a LoRA per class still short, trained on its real images (or
        reused from an earlier run of this build), generated with from the first round."""
        self._adapters: tuple[dict[str, Any], dict[str, Any]] | None = None
        short = {c for c, d in self.deficit.items() if d > 0}
        if self._spec.trains_lora and short:
            from synthgen.pipelines.adapt import train_class_adapters

            self._adapters = train_class_adapters(session, self.source, short)

    @property
    def _spec(self) -> BalanceSpec:
        assert self.recipe.balance is not None
        return self.recipe.balance

    def _need(self) -> dict[int, int]:
        return {c: d - self.accepted[c] for c, d in self.deficit.items() if d > self.accepted[c]}

    def _planning_rate(self, c: int) -> float | None:
        """The accept rate class `c`'s next top-ups are planned by (`planning_rate`), or None
        once its top-ups show it accepts under `min_accept_rate` (`shown_below`)."""
        accepted, attempted, low = self.accepted[c], self.attempted[c], self._spec.min_accept_rate
        return (
            None
            if shown_below(accepted, attempted, low)
            else planning_rate(accepted, attempted, low)
        )

    def next_round(self) -> PlanRound | None:
        """1. what each short class still needs 2. the accept rate it is planned by
        (`planning_rate`) 3. the plan."""
        need = self._need()
        if not need or len(self.history) >= self._spec.max_rounds:
            return None
        counts = dict(self.attempted)
        for c, n in need.items():
            rate = self._planning_rate(c)
            if rate is None:
                raise BuildError(self._unfillable(need))
            counts[c] = self.attempted[c] + math.ceil(n / rate * self._spec.overgenerate)
        self._last = PlanRound(
            round=len(self.history),
            counts=counts,
            start=dict(self.attempted),
            shard_offset=self.shard_offset,
            quota=need,
        )
        return self._last

    def observe(self, outcome: RoundOutcome) -> None:
        plan_round = outcome.plan_round
        assert plan_round.quota is not None and plan_round.counts is not None
        shards = [s.shard for s in outcome.stats]
        got, tried = _accepted_by_class(outcome.out, shards)
        for c in self.before:
            self.accepted[c] += got.get(c, 0)
            self.attempted[c] += tried.get(c, 0)
        self.history.append(
            BalanceRound(
                round=plan_round.round,
                planned={
                    self.names[c]: plan_round.counts[c] - plan_round.start.get(c, 0)
                    for c in plan_round.quota
                },
                accepted={self.names[c]: got.get(c, 0) for c in plan_round.quota},
            )
        )
        self.shard_offset = max(shards) + 1

    def finish(self, session: BuildSession) -> Finish:
        """The balanced index (real rows, then accepted synthetic rows) and the manifest's
        balance block; a class still short after the last round fails the build by name."""
        if self._need():
            raise BuildError(self._unfillable(self._need()))
        path = session.out / BALANCED_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self._synthetic_rows(session)
        with atomic_write(path) as f:
            writer = pq.ParquetWriter(f, BALANCED_SCHEMA)
            for batch in pq.ParquetFile(self._real_path).iter_batches(batch_size=65536):
                writer.write_batch(batch)
            writer.write_table(pa.Table.from_pylist(rows, schema=BALANCED_SCHEMA))
            writer.close()
        names = self.names
        kind = next((k for k in _SOURCE_KINDS if self.source.description.startswith(k)), "")
        base = None if self.resolved.base_dir is None else str(self.resolved.base_dir)
        balance = BalanceInfo(
            source=kind + public_path(self._spec.source, base),  # as written, else by name
            target={names[c]: self.targets[c] for c in self.before},
            before={names[c]: self.before[c] for c in self.before},
            after={names[c]: self.before[c] + self.accepted[c] for c in self.before},
            rounds=self.history,
            balanced_index=BALANCED_NAME,
        )
        files = {BALANCED_NAME: FileInfo(sha256=file_sha256(path), bytes=path.stat().st_size)}
        extra: dict[str, Any] = {"files": files, "balance": balance}
        if getattr(self, "_adapters", None):
            adapters, adapter_files = self._adapters  # type: ignore[misc]
            extra |= {"files": files | adapter_files, "adapters": adapters}
        return Finish(targets={names[c]: self.deficit[c] for c in self.before}, extra=extra)

    def _synthetic_rows(self, session: BuildSession) -> list[dict[str, Any]]:
        rows = []
        shards = sorted(s.shard for o in session.rounds for s in o.stats)
        for shard in shards:
            table = pq.read_table(
                session.out / shard_files(shard).parquet,
                columns=["key", "shard", "class_label", "status"],
            )
            # by key: the index does not depend on the seeded order of samples in a shard
            for r in sorted(table.to_pylist(), key=lambda r: r["key"]):
                if r["status"] == "accepted":
                    rows.append(
                        {
                            "source": "synthetic",
                            "label": r["class_label"],
                            "class_name": self.names[r["class_label"]],
                            "reference": None,
                            "key": r["key"],
                            "shard": r["shard"],
                        }
                    )
        return rows

    def _unfillable(self, short: dict[int, int]) -> str:
        spec = self._spec
        parts = [
            f"{self.names[c]} (short by {n}: {self.accepted[c]} of {self.attempted[c]} "
            "generated were accepted)"
            for c, n in sorted(short.items())
        ]
        return (
            f"balancing could not fill: {'; '.join(parts)} within {spec.max_rounds} round(s) "
            f"(a class is given up on once its top-ups show, at {GIVE_UP_CONFIDENCE:.0%} "
            f"confidence, that it accepts under {spec.min_accept_rate:.0%}); "
            "loosen its checks, improve its prompts, or lower its target"
        )

    def close(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()


def recorded_source(balance: BalanceInfo) -> str:
    """Where a balancing build read its source (the path or pattern in `balance.source`)."""
    for kind in _SOURCE_KINDS:
        if balance.source.startswith(kind):
            return balance.source[len(kind) :]
    return balance.source
