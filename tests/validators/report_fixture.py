"""A report's whole input built in memory (no model, no build): every section of the page has
something to show (thresholds, failures, surplus, balancing rounds, reference metrics, the
embedding map, near copies, two runs, a trend). The same call gives the same data."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from synthgen.schemas.manifest import (
    STATE_DIR,
    BalanceInfo,
    BalanceRound,
    Counts,
    ExpectationInfo,
    Manifest,
    MetricsInfo,
    ModelInfo,
    ShardEntry,
    UsageInfo,
    ValidationInfo,
    stats_name,
)
from synthgen.schemas.scores import IMAGE_EMBEDDING, ScoreColumn
from synthgen.validators.nearest import ReferenceSet
from synthgen.validators.report import RUNS_NAME, ReportData
from tests.conftest import tiny_recipe_dict

CLASSES = ("zero", "one", "two")
PER_CLASS = 12
DIM = 8
SCORE = "clip_tiny_clip_score"
MARGIN = "clip_tiny_clip_label_margin"
EMBEDDING = "clip_tiny_clip_embedding"


def _png(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def score_columns() -> list[ScoreColumn]:
    return [
        ScoreColumn(
            name=SCORE, scorer="clip", minimum=-1.0, maximum=1.0, checks={"clip_score": "above"}
        ),
        ScoreColumn(
            name=MARGIN, scorer="clip", minimum=-2.0, maximum=2.0, checks={"label_margin": "above"}
        ),
        ScoreColumn(
            name="entropy",
            scorer="image_stats",
            minimum=0.0,
            maximum=8.0,
            checks={"low_information": "above"},
        ),
        ScoreColumn(
            name=EMBEDDING,
            scorer="clip_embedding",
            minimum=-1.0,
            maximum=1.0,
            dim=DIM,
            role=IMAGE_EMBEDDING,
        ),
    ]


def _status(i: int) -> tuple[str, str | None, str | None]:
    """(status, reject reason, error message) of the i-th sample of a class."""
    if i % 6 == 1:
        return "rejected", "clip_score", None
    if i % 6 == 3:
        return "rejected", "low_information", None
    if i == 10:
        return "rejected", "surplus", None
    if i == 11:
        return "failed", "error:RuntimeError", "CUDA <out> of memory & more"
    return "accepted", None, None


def sample_rows(rng: np.random.Generator) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for label, cls in enumerate(CLASSES):
        centre = rng.normal(size=DIM)
        for i in range(PER_CLASS):
            status, reason, message = _status(i)
            emb = centre + 0.4 * rng.normal(size=DIM)
            emb = (emb / np.linalg.norm(emb)).astype(np.float32).tolist()
            failed = status == "failed"
            rows.append(
                {
                    "key": f"tiny-{cls}-{label * PER_CLASS + i:06d}",
                    "shard": i // 6,
                    "index": i,
                    "class_label": label,
                    "class_name": cls,
                    "status": status,
                    "reject_reason": reason,
                    "error_message": message,
                    "phash": None if failed else f"{int(rng.integers(0, 2**62)):016x}",
                    "width": None if failed else 8,
                    "height": None if failed else 8,
                    SCORE: None if failed else float(rng.normal(0.25 + 0.02 * label, 0.05)),
                    MARGIN: None if failed else float(rng.normal(0.01, 0.02)),
                    "entropy": None if failed else float(rng.uniform(2.0, 7.5)),
                    EMBEDDING: None if failed else emb,
                }
            )
    return pd.DataFrame(rows)


def _reference(rows: pd.DataFrame, rng: np.random.Generator) -> ReferenceSet:
    """Six real images per class near the synthetic ones; one a near copy of a sample."""
    refs, labels, phashes, embs, thumbs = [], [], [], [], []
    accepted = rows[rows["status"] == "accepted"]
    for label in range(len(CLASSES)):
        mine = accepted[accepted["class_label"] == label]
        for j in range(6):
            base = np.asarray(mine.iloc[j % len(mine)][EMBEDDING])
            e = base if (label, j) == (1, 0) else base + 0.5 * rng.normal(size=DIM)
            refs.append(f"/data/real/shard-{label}.tar#real-{label}-{j}")
            labels.append(label)
            phashes.append(f"{int(rng.integers(0, 2**62)):016x}")
            embs.append(e / np.linalg.norm(e))
            thumbs.append(_png(1000 + 10 * label + j))
    return ReferenceSet(refs, labels, phashes, np.asarray(embs, dtype=np.float32), thumbs)


def _recipe() -> dict[str, Any]:
    recipe = tiny_recipe_dict(Path("models"), count_per_class=PER_CLASS)
    recipe["scoring"]["scorers"] = [
        {"name": "clip"},
        {"name": "clip_embedding"},
        {"name": "image_stats"},
    ]
    recipe["checks"] = {
        "clip_score": {"absolute": 0.22},
        "low_information": {"quantile": 0.15},
        "exact_duplicate": False,
        "near_copy": {"min_similarity": 0.97, "max_phash_distance": 4},
    }
    recipe["reference"] = {"source": "real-digits"}
    recipe["validation"] = {
        "min_accepted_fraction": 0.3,
        "metrics": {"vendi": {"min": 1.0, "per_class": False}, "precision": {"min": 0.2}},
    }
    recipe["output"]["c2pa"] = {
        "cert_chain_env": "TEST_CHAIN",
        "key_env": "TEST_KEY",
        "alg": "es256",
    }
    return recipe


def _metrics(rows: pd.DataFrame) -> MetricsInfo:
    per_class = {}
    for label, cls in enumerate(CLASSES):
        n = int(((rows["class_name"] == cls) & (rows["status"] == "accepted")).sum())
        per_class[cls] = {
            "n_synthetic": n,
            "n_reference": 6,
            "precision": 0.5 + 0.1 * label,
            "recall": 0.4,
            "density": 0.9,
            "coverage": 0.3 + 0.05 * label,
            "frechet_distance": 1.25 + label,
            "kid": 0.0123,
            "vendi": 2.5 - 0.5 * label,
            "mean_pairwise_distance": 0.61,
        }
    overall = {**per_class["one"], "n_synthetic": 18, "n_reference": 18, "precision": 0.55}
    return MetricsInfo(
        reference="real-digits",
        reference_images=18,
        embedding_column=EMBEDDING,
        k=3,
        overall=overall,
        per_class=per_class,
    )


def _validation() -> ValidationInfo:
    def e(
        dataset: str, kind: str, kwargs: dict[str, Any], ok: bool, detail: str
    ) -> ExpectationInfo:
        return ExpectationInfo(
            dataset=dataset, expectation=kind, kwargs=kwargs, success=ok, detail=detail
        )

    return ValidationInfo(
        success=False,
        failures=["samples: a <bad> thing"],
        expectations=[
            e("samples", "expect_column_values_to_be_unique", {"column": "key"}, True, ""),
            e(
                "samples",
                "expect_column_values_to_be_in_set",
                {
                    "column": "status",
                    "value_set": ["accepted", "rejected", "failed", "a-very-long-status-name"],
                    "mostly": 0.5,
                },
                True,
                "",
            ),
            e(
                "samples",
                "expect_column_values_to_be_between",
                {"column": "width", "min_value": 8, "max_value": 8},
                True,
                "observed 8",
            ),
            e(
                "samples",
                "expect_column_values_to_be_between",
                {"column": SCORE, "min_value": -1.0, "max_value": 1.0},
                False,
                "2 unexpected, e.g. [1.5]",
            ),
            e(
                "samples",
                "expect_column_values_to_match_regex",
                {"column": "key", "regex": "^[a-z]+$"},
                True,
                "",
            ),
            e(
                "classes",
                "expect_column_pair_values_to_be_equal",
                {"column_A": "planned", "column_B": "attempted"},
                True,
                "",
            ),
            e("metrics", "expect_something_new", {"column": "vendi", "min_value": 1500}, True, ""),
        ],
    )


def _manifest(rows: pd.DataFrame, columns: list[ScoreColumn], balance: bool) -> Manifest:
    recipe = _recipe()
    status = rows["status"]
    planned = {c: PER_CLASS for c in CLASSES}
    shards = [ShardEntry(shard=s, files={}, accepted=0, rejected=0, failed=0) for s in (0, 1)]
    return Manifest(
        status="failed_validation",
        recipe_name="tiny <report>",
        recipe_hash="ab" * 32,
        recipe=recipe,
        created_at="2024-01-01T00:00:00Z",
        finished_at="2024-01-01T00:20:00Z",
        versions={"synthgen-corpus": "9.9", "torch": "2.x"},
        model=ModelInfo(path="sd", sha256="0" * 64, class_="StableDiffusionPipeline"),
        scorers=[{"name": "clip", "model": "tiny-clip"}],
        score_columns=columns,
        counts=Counts(
            planned=len(rows),
            attempted=len(rows),
            accepted=int((status == "accepted").sum()),
            rejected=int((status == "rejected").sum()),
            failed=int((status == "failed").sum()),
            planned_per_class=planned,
        ),
        shards=shards,
        validation=_validation(),
        metrics=_metrics(rows),
        usage=UsageInfo(license="openrail", license_source="model_card", usage="research <only>"),
        balance=BalanceInfo(
            source="real-digits",
            target={c: 20 for c in CLASSES},
            before={"zero": 3, "one": 12, "two": 6},
            after={"zero": 12, "one": 18, "two": 14},
            rounds=[
                BalanceRound(
                    round=0, planned={c: 8 for c in CLASSES}, accepted={c: 4 for c in CLASSES}
                ),
                BalanceRound(
                    round=1, planned={"zero": 4, "two": 4}, accepted={"zero": 2, "two": 2}
                ),
            ],
            balanced_index="balanced.parquet",
        )
        if balance
        else None,
    )


def _images(rows: pd.DataFrame) -> dict[str, Any]:
    accepted: dict[str, list[bytes]] = {}
    accepted_keys: dict[str, list[str]] = {}
    rejected: dict[str, list[tuple[bytes, str]]] = {}
    rejected_keys: dict[str, list[str]] = {}
    reasons: dict[str, list[bytes]] = {}
    reason_keys: dict[str, list[str]] = {}
    samples: dict[str, bytes] = {}
    for n, row in enumerate(rows.itertuples(index=False)):
        if row.status == "failed":
            continue
        image = _png(n)
        samples[row.key] = image
        if row.status == "accepted":
            accepted.setdefault(row.class_name, []).append(image)
            accepted_keys.setdefault(row.class_name, []).append(row.key)
        else:
            rejected.setdefault(row.class_name, []).append((image, str(row.reject_reason)))
            rejected_keys.setdefault(row.class_name, []).append(row.key)
            reasons.setdefault(str(row.reject_reason), []).append(image)
            reason_keys.setdefault(str(row.reject_reason), []).append(row.key)
    return {
        "accepted_images": accepted,
        "accepted_keys": accepted_keys,
        "rejected_images": rejected,
        "rejected_keys": rejected_keys,
        "reason_images": reasons,
        "reason_keys": reason_keys,
        "sample_images": samples,
    }


def _runs(out: Path) -> None:
    """Two runs with an idle pause between them; shard 0 finished in the first."""
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    starts = ["2024-01-01T00:00:00.500000Z", "2024-01-01T00:15:00Z"]
    (state / RUNS_NAME).write_text("".join(json.dumps({"started_at": s}) + "\n" for s in starts))
    for shard, stamp in ((0, 1704067500), (1, 1704068350)):  # 00:05:00, 00:19:10
        path = out / stats_name(shard)
        path.write_text("{}")
        os.utime(path, (stamp, stamp))


def report_data(out: Path, *, reference: bool = True, balance: bool = True) -> ReportData:
    """The report's input for a build folder `out` (its run log and stats files are written
    there); `reference`/`balance` False leave those sections empty."""
    out.mkdir(parents=True, exist_ok=True)
    _runs(out)
    rng = np.random.default_rng(0)
    rows = sample_rows(rng)
    ref = _reference(rows, rng)
    manifest = _manifest(rows, score_columns(), balance)
    if not reference:
        manifest = manifest.model_copy(update={"metrics": None})
    constants = {
        "pipeline_class": "StableDiffusionPipeline",
        "scheduler": "dpm-solver++",
        "steps": 2,
        "guidance_scale": 2.0,
        "dtype": "float32",
        "device": "cpu",
    }
    images = _images(rows)
    if not reference:
        images["sample_images"] = {}
    return ReportData(
        out=out,
        manifest=manifest,
        rows=rows,
        accepted_images=images["accepted_images"],
        rejected_images=images["rejected_images"],
        reference=ref if reference else None,
        reference_location="real-digits" if reference else None,
        reason_images=images["reason_images"],
        sample_images=images["sample_images"],
        constants=constants,
        accepted_keys=images["accepted_keys"],
        rejected_keys=images["rejected_keys"],
        reason_keys=images["reason_keys"],
    )


def previous_report(report: dict[str, Any]) -> dict[str, Any]:
    """A previous build's report.json: more accepted, better metrics (so this one regresses
    in some figures and not in others)."""
    before = json.loads(json.dumps(report, default=str))
    before["counts"]["accepted"] = report["counts"]["accepted"] + 6
    for cls in before["counts"]["per_class"]:
        before["counts"]["per_class"][cls]["accepted"] += 2
    metrics = before.get("metrics") or {}
    if metrics:
        metrics["overall"]["precision"] = 0.9
        metrics["per_class"]["two"]["vendi"] = 9.0
    before["recipe_hash"] = "cd" * 32
    before["trend"] = {"history": {"overall": [80.0, None], "accept_rate": {"zero": [70.0]}}}
    return before
