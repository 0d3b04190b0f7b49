"""Label-conditioned class balancing: top up a labelled dataset to target counts after filtering.

Rounds: each round plans, for every class still short, `need / accept rate * overgenerate`
new samples (new indices, so new keys and seeds, into new shards), builds them, and counts
what was accepted; an accepted surplus is rejected as `surplus`, so every class ends exactly at
its target. Every round is a pure function of the recipe, the source's label histogram and the
earlier rounds' (deterministic) results, so `--resume` replays it and reuses finished shards.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from synthgen.generators.planning import check_unique_keys, plan
from synthgen.generators.sources.base import SourceRecord
from synthgen.generators.sources.open import open_source, read_histogram
from synthgen.pipelines.build import (
    BuildError,
    BuildResult,
    ShardsOutcome,
    _already_complete,
    build_shards,
    finalize,
    prepare_output,
)
from synthgen.pipelines.resolve import ResolvedRecipe, make_context
from synthgen.schemas.manifest import shard_files
from synthgen.schemas.recipe import BalanceSpec, Recipe
from synthgen.schemas.records import GenerationRequest
from synthgen.storage.atomic import atomic_write, remove_stale_tmp
from synthgen.storage.hashing import file_sha256

logger = logging.getLogger(__name__)

BALANCED_NAME = "balanced.parquet"
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


def targets_for(spec: BalanceSpec, recipe: Recipe, before: dict[int, int]) -> dict[int, int]:
    """Total (real + synthetic) count wanted per class id."""
    if spec.target == "max":
        top = max(before.values())
        return {c: top for c in before}
    if isinstance(spec.target, int):
        return {c: spec.target for c in before}
    by_name = {c.name: c.id for c in recipe.classes}
    out = dict(before)  # classes the mapping leaves out are not topped up
    for name, count in spec.target.items():
        class_id = by_name.get(name)
        if class_id is None and name.isdigit() and int(name) in before:
            class_id = int(name)
        if class_id is None:
            raise BuildError(f"balance.target: {name!r} is not one of the recipe's classes")
        out[class_id] = count
    return out


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
                "reference": record.reference,
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
        table = pq.read_table(out / shard_files(shard)[1], columns=["class_label", "status"])
        for label, status in zip(
            table.column("class_label").to_pylist(), table.column("status").to_pylist(), strict=True
        ):
            attempted[label] = attempted.get(label, 0) + 1
            if status == "accepted":
                accepted[label] = accepted.get(label, 0) + 1
    return accepted, attempted


def run_balance(
    out: Path,
    resolved: ResolvedRecipe,
    options: PipelineOptions,
    resume: bool,
    start: float,
    show_progress: bool,
) -> BuildResult:
    recipe = resolved.recipe
    spec = recipe.balance
    assert spec is not None
    assert resolved.balance_source is not None
    source = open_source(spec, resolved.balance_source)
    names = {c.id: c.name for c in recipe.classes}

    with tempfile.TemporaryDirectory() as tmp:
        real_path = Path(tmp) / "real.parquet"
        sink = _RealRows(real_path, recipe)
        try:
            before = read_histogram(source, recipe, sink)
        finally:
            sink.close()
        targets = targets_for(spec, recipe, before)
        deficit = {c: max(0, targets[c] - before[c]) for c in before}
        logger.info("balance: source %s has %s; deficit %s", source.description, before, deficit)

        # Only now, with the source read and checked, does the output folder come to exist.
        state = prepare_output(out, recipe, resume)
        remove_stale_tmp(out)
        ctx = make_context(resolved, state["created_at"])
        done = _already_complete(out, start, [])
        if done is not None:
            return done

        accepted = {c: 0 for c in before}
        attempted = {c: 0 for c in before}
        shard_offset = 0
        all_requests: list[GenerationRequest] = []
        entries: list[dict[str, Any]] = []
        reused: list[int] = []
        generated_now = 0
        metrics: dict[str, int] = {}
        rounds: list[dict[str, Any]] = []
        for round_no in range(spec.max_rounds):
            need = {c: deficit[c] - accepted[c] for c in before if deficit[c] > accepted[c]}
            if not need:
                break
            counts = dict(attempted)
            for c, n in need.items():
                rate = 1.0 if attempted[c] == 0 else accepted[c] / attempted[c]
                if attempted[c] and rate < spec.min_accept_rate:
                    raise BuildError(_unfillable(names, need, accepted, attempted, spec))
                counts[c] = attempted[c] + math.ceil(n / rate * spec.overgenerate)
            requests = plan(recipe, counts, start=dict(attempted), shard_offset=shard_offset)
            all_requests += requests
            check_unique_keys(all_requests)
            prior = sorted({e["shard"] for e in entries})
            outcome = build_shards(
                out,
                resolved,
                ctx,
                requests,
                options,
                show_progress,
                None,
                plan_kwargs={
                    "counts": counts,
                    "start": dict(attempted),
                    "shard_offset": shard_offset,
                },
                prior_shards=prior,
                quota=need,
            )
            entries += outcome.entries
            reused += outcome.reused
            generated_now += outcome.generated_now
            for k, v in outcome.metrics.items():
                metrics[k] = metrics.get(k, 0) + v
            round_shards = [e["shard"] for e in outcome.entries]
            got, tried = _accepted_by_class(out, round_shards)
            for c in before:
                accepted[c] += got.get(c, 0)
                attempted[c] += tried.get(c, 0)
            rounds.append(
                {
                    "round": round_no,
                    "planned": {
                        names[c]: counts[c] - (attempted[c] - tried.get(c, 0)) for c in need
                    },
                    "accepted": {names[c]: got.get(c, 0) for c in need},
                }
            )
            shard_offset = max(round_shards) + 1
        short = {c: deficit[c] - accepted[c] for c in before if deficit[c] > accepted[c]}
        if short:
            raise BuildError(_unfillable(names, short, accepted, attempted, spec))

        balanced_rows = _synthetic_rows(out, entries, names)
        with atomic_write(out / BALANCED_NAME) as f:
            writer = pq.ParquetWriter(f, BALANCED_SCHEMA)
            for batch in pq.ParquetFile(real_path).iter_batches(batch_size=65536):
                writer.write_batch(batch)
            writer.write_table(pa.Table.from_pylist(balanced_rows, schema=BALANCED_SCHEMA))
            writer.close()

    after = {names[c]: before[c] + accepted[c] for c in before}
    balanced = out / BALANCED_NAME
    extra = {
        "files": {
            BALANCED_NAME: {"sha256": file_sha256(balanced), "bytes": balanced.stat().st_size}
        },
        "balance": {
            "source": source.description,
            "target": {names[c]: targets[c] for c in before},
            "before": {names[c]: before[c] for c in before},
            "after": after,
            "rounds": rounds,
            "balanced_index": BALANCED_NAME,
        },
    }
    result = finalize(
        out,
        resolved,
        state,
        ctx,
        all_requests,
        ShardsOutcome(entries, reused, generated_now, metrics),
        start,
        targets={names[c]: deficit[c] for c in before},
        extra=extra,
    )
    return result


def _synthetic_rows(
    out: Path, entries: list[dict[str, Any]], names: dict[int, str]
) -> list[dict[str, Any]]:
    rows = []
    for entry in sorted(entries, key=lambda e: e["shard"]):
        table = pq.read_table(
            out / shard_files(entry["shard"])[1], columns=["key", "shard", "class_label", "status"]
        )
        for r in table.to_pylist():
            if r["status"] == "accepted":
                rows.append(
                    {
                        "source": "synthetic",
                        "label": r["class_label"],
                        "class_name": names[r["class_label"]],
                        "reference": None,
                        "key": r["key"],
                        "shard": r["shard"],
                    }
                )
    return rows


def _unfillable(
    names: dict[int, str],
    short: dict[int, int],
    accepted: dict[int, int],
    attempted: dict[int, int],
    spec: BalanceSpec,
) -> str:
    parts = [
        f"{names[c]} (short by {n}: {accepted[c]} of {attempted[c]} generated were accepted)"
        for c, n in sorted(short.items())
    ]
    return (
        f"balancing could not fill: {'; '.join(parts)} within {spec.max_rounds} round(s) "
        f"(a class accepting under {spec.min_accept_rate:.0%} is given up on); "
        "loosen its checks, improve its prompts, or lower its target"
    )
