"""`synthgen compare`: which model (or sampler, or step count) gives the most useful images
per device-second.

Each candidate is a set of `--set` overrides on one recipe (a model folder, a sampler, a
step count). Every candidate is calibrated by an ordinary build of the same classes and seeds
under a scratch root (`SCRATCH/<candidate>/`, kept for inspection, never published); then one
table compares them: images per device-second and device-seconds (and, with a price, money)
per 1,000 accepted images, the acceptance rate, mean CLIP score and label margin of the
accepted images, FD and coverage against the recipe's reference where it has one, and a probe
classifier's accuracy on real labelled images after training on the candidate's accepted
images alone — the figure that says which candidate makes better training data.

Device-seconds are the time the thread that drives the device spends in model calls (the
`device_ms` counter). On CUDA a call returns once its work is queued and its images are
still on the device, so the tail of its last kernels (often the VAE decode) is not counted;
with several model copies on one device their overlapping calls each count. Compare
candidates with one copy per device; on CUDA, read the figures as a lower bound.

The probe: a multinomial logistic regression (scikit-learn, fixed seed) on the stored image
embeddings of the accepted samples, scored on the real images' embeddings (the recipe's
`eval_set` when it has one — images the model never saw — else its `reference`). Its input
is what every build already stores; nothing is embedded twice.
"""

from __future__ import annotations

import html
import json
import logging
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from synthgen.schemas.manifest import STATE_DIR, Manifest, shard_files
from synthgen.schemas.recipe import RecipeError
from synthgen.schemas.scores import image_embedding_column
from synthgen.storage.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"
DEFAULT_COUNT_PER_CLASS = 20


@dataclass(frozen=True)
class Candidate:
    """One way to make the recipe's images: a name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """`NAME: key=value key=value` (overrides as `--set` takes them); `NAME:` alone is
        the recipe as it is."""
        name, sep, rest = text.partition(":")
        name = name.strip()
        if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise RecipeError(
                f"--candidate {text!r}: expected 'NAME: key=value ...' with a name of "
                "letters, digits, - and _"
            )
        overrides = tuple(shlex.split(rest))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise RecipeError(f"--candidate {name}: {bad[0]!r} is not key=value")
        return cls(name, overrides)

    @classmethod
    def for_model(cls, path: str) -> Candidate:
        """`--model PATH`: the recipe with another model folder, named after the folder."""
        name = Path(path.rstrip("/")).name or "model"
        return cls(name, (f"model.path={path}",))


@dataclass(frozen=True)
class Row:
    """One candidate's figures (None where the build gives nothing to measure)."""

    candidate: str
    overrides: list[str]
    generated: int
    accepted: int
    acceptance: float | None
    device_seconds: float
    images_per_second: float | None
    device_seconds_per_1k_accepted: float | None
    price_per_1k_accepted: float | None
    clip_score: float | None
    label_margin: float | None
    frechet_distance: float | None
    coverage: float | None
    probe_accuracy: float | None
    probe_images: str | None  # which real images the probe was scored on
    build: str


def check_candidates(candidates: Sequence[Candidate]) -> None:
    """At least two, each named once (their scratch folders are named after them)."""
    if len(candidates) < 2:
        raise RecipeError("compare: give at least two candidates (--model / --candidate)")
    names = [c.name for c in candidates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError(f"compare: candidate named twice: {', '.join(twice)}")


def _accepted_table(out: Path, manifest: Manifest) -> dict[str, list[Any]]:
    """The accepted rows' scalar scores, labels and embeddings, every shard."""
    embedding = image_embedding_column(manifest.score_columns)
    # the columns backing the named checks (`clip_score`, `label_margin`), by the checks
    # they declare: their names carry the CLIP model's
    backing = {
        check: c.name
        for c in manifest.score_columns
        if not c.is_vector
        for check in c.checks
        if check in ("clip_score", "label_margin")
    }
    wanted = ["class_label", "status", *backing.values(), *([embedding] if embedding else [])]
    rows: dict[str, list[Any]] = {name: [] for name in wanted}
    for shard in manifest.shard_ids:
        table = pq.read_table(out / shard_files(shard).parquet, columns=wanted).to_pydict()
        keep = [i for i, s in enumerate(table["status"]) if s == "accepted"]
        for name in wanted:
            rows[name] += [table[name][i] for i in keep]
    for check, column in backing.items():
        rows[check] = rows.pop(column)
    rows["embedding"] = rows.pop(embedding) if embedding else []
    return rows


def _mean(values: list[Any]) -> float | None:
    return float(np.mean(values)) if values else None


def _real_set(out: Path, manifest: Manifest) -> tuple[Any, str] | None:
    """The embedded real images to score the probe on: the eval set's (never seen by the
    model) if the build has one, else the reference the manifest's metrics name."""
    from synthgen.validators.nearest import read_reference

    references = out / STATE_DIR / "references"
    evals = sorted(references.glob("eval_set-*.parquet")) if references.is_dir() else []
    if len(evals) == 1:  # a calibration build embeds its one eval set
        return read_reference(evals[0]), "eval_set"
    cache = manifest.metrics.reference_cache if manifest.metrics else None
    if cache and (out / cache).is_file():
        return read_reference(out / cache), "reference"
    return None


def probe_accuracy(
    embeddings: list[Any], labels: list[int], real: Any, seed: int = 0
) -> float | None:
    """Accuracy on the real images of a probe trained on the synthetic ones only (None when
    the synthetic images cover fewer than two classes)."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2 or real is None or len(real) == 0:
        return None
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(np.asarray(embeddings, dtype=np.float64), np.asarray(labels))
    predicted = probe.predict(np.asarray(real.embeddings, dtype=np.float64))
    return float(np.mean(predicted == np.asarray(real.labels)))


def measure(
    candidate: Candidate, out: Path, device_seconds: float, price_per_hour: float | None
) -> Row:
    """One calibration build's row of the table."""
    from synthgen.validators.corpus import read_manifest

    manifest = read_manifest(out)
    counts = manifest.counts
    generated = counts.accepted + counts.rejected + counts.failed
    rows = _accepted_table(out, manifest)
    accepted = len(rows["class_label"])
    per_1k = device_seconds / accepted * 1000 if accepted else None
    overall = manifest.metrics.overall if manifest.metrics else {}
    real = _real_set(out, manifest)
    probe = None
    if real is not None and rows["embedding"]:
        probe = probe_accuracy(rows["embedding"], rows["class_label"], real[0])
    return Row(
        candidate=candidate.name,
        overrides=list(candidate.overrides),
        generated=generated,
        accepted=accepted,
        acceptance=accepted / generated if generated else None,
        device_seconds=round(device_seconds, 3),
        images_per_second=generated / device_seconds if device_seconds > 0 else None,
        device_seconds_per_1k_accepted=per_1k,
        price_per_1k_accepted=(
            per_1k / 3600 * price_per_hour
            if per_1k is not None and price_per_hour is not None
            else None
        ),
        clip_score=_mean(rows.get("clip_score", [])),
        label_margin=_mean(rows.get("label_margin", [])),
        frechet_distance=_number(overall.get("frechet_distance")),
        coverage=_number(overall.get("coverage")),
        probe_accuracy=probe,
        probe_images=None if real is None else real[1],
        build=candidate.name,
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


COLUMNS = (
    ("candidate", "candidate", "{}"),
    ("images_per_second", "images/s", "{:.1f}"),
    ("device_seconds_per_1k_accepted", "device-s / 1k accepted", "{:.1f}"),
    ("price_per_1k_accepted", "price / 1k accepted", "{:.4f}"),
    ("acceptance", "accepted", "{:.0%}"),
    ("clip_score", "CLIP score", "{:.3f}"),
    ("label_margin", "label margin", "{:.3f}"),
    ("frechet_distance", "FD", "{:.4f}"),
    ("coverage", "coverage", "{:.2f}"),
    ("probe_accuracy", "probe accuracy", "{:.1%}"),
)


def _cells(row: Row) -> list[str]:
    values = asdict(row)
    return ["–" if values[k] is None else fmt.format(values[k]) for k, _, fmt in COLUMNS]


def table_lines(rows: Sequence[Row]) -> list[str]:
    """The comparison as a Markdown table (what the command prints)."""
    head = [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return lines


def report_html(rows: Sequence[Row], recipe_name: str) -> str:
    """A self-contained page: the comparison section, and where each calibration build is."""
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows
    )
    probes = sorted({r.probe_images for r in rows if r.probe_images})
    note = (
        f"Probe: logistic regression on each candidate's accepted embeddings, scored on the "
        f"real images of the recipe's {' / '.join(probes)}."
        if probes
        else "No probe: the recipe has no labelled reference or eval set."
    )
    builds = "".join(
        f"<li><code>{html.escape(r.candidate)}/</code>: "
        f"{html.escape(' '.join(r.overrides) or '(the recipe as it is)')}</li>"
        for r in rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>synthgen compare: {html.escape(recipe_name)}</title></head><body>"
        f"<section id='compare'><h2>Candidates compared ({html.escape(recipe_name)})</h2>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>{html.escape(note)} Device-seconds are the time spent in model calls.</p>"
        f"<ul>{builds}</ul></section></body></html>\n"
    )


def write_results(scratch: Path, rows: Sequence[Row], recipe_name: str) -> None:
    payload = {"recipe": recipe_name, "candidates": [asdict(r) for r in rows]}
    write_bytes_atomic(scratch / COMPARE_JSON, json.dumps(payload, indent=2).encode())
    write_bytes_atomic(scratch / COMPARE_HTML, report_html(rows, recipe_name).encode())


TIMING_NAME = "compare-timing.json"  # under a calibration build's .synthgen/


def _finished(out: Path, recipe_hash: str) -> bool:
    """Whether `out` holds this candidate's finished calibration and its timing."""
    from synthgen.validators.corpus import read_manifest

    if not (out / "manifest.json").is_file() or not (out / STATE_DIR / TIMING_NAME).is_file():
        return False
    try:
        return read_manifest(out).recipe_hash == recipe_hash
    except (OSError, ValueError):
        return False


def _calibrate(
    recipe: str | Path, candidate: Candidate, out: Path, overrides: list[str], recipe_hash: str
) -> float:
    """The device-seconds of one candidate's calibration build: a finished one under `out`
    (same recipe) is reused with no model call; anything else there (a build cut short, whose
    shards made before would go uncounted, or another recipe's) is made again from nothing,
    so every figure counts every model call of the build it describes."""
    from synthgen.pipelines.build import ValidationFailed, run_build

    timing = out / STATE_DIR / TIMING_NAME
    if not _finished(out, recipe_hash):
        if (out / STATE_DIR).is_dir():
            logger.warning("compare: %s: calibrating again (unfinished or changed)", out)
            shutil.rmtree(out)
        try:
            result = run_build(recipe, out, overrides=overrides, show_progress=False)
        except ValidationFailed as failed:  # a poor candidate is a row of the table
            result = failed.result
        seconds = result.metrics.get("device_ms", 0) / 1000
        write_bytes_atomic(timing, json.dumps({"device_seconds": seconds}).encode())
    return float(json.loads(timing.read_bytes())["device_seconds"])


def run_compare(
    recipe: str | Path,
    candidates: Sequence[Candidate],
    scratch: Path,
    overrides: Sequence[str] = (),
    count_per_class: int | None = DEFAULT_COUNT_PER_CLASS,
    price_per_hour: float | None = None,
) -> list[Row]:
    """Calibrate every candidate under `scratch` (one build each, same classes and seeds),
    then write `compare.json` and `compare.html` there and return the rows in order."""
    from synthgen.schemas.recipe import load_recipe

    check_candidates(candidates)
    if price_per_hour is not None and price_per_hour < 0:
        raise RecipeError("--price-per-hour: must be at least 0")
    # the calibration size first, so the user's own `--set count_per_class=` wins
    common = [f"count_per_class={count_per_class}"] if count_per_class is not None else []
    common += list(overrides)
    # every candidate's recipe is read and checked before the first calibration starts
    loaded = [load_recipe(recipe, common + list(c.overrides))[0] for c in candidates]
    scratch.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for candidate, checked in zip(candidates, loaded, strict=True):
        out = scratch / candidate.name
        overridden = common + list(candidate.overrides)
        seconds = _calibrate(recipe, candidate, out, overridden, checked.hash)
        rows.append(measure(candidate, out, seconds, price_per_hour))
    write_results(scratch, rows, loaded[0].name)
    return rows
