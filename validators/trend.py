"""Trend across scheduled builds: this build's report against the previously published one.

A published build lives at `ROOT/builds/<time>-<hash>/`; until it is swapped in, `ROOT/latest`
points to the build before it. The report compares the two (counts, accept rate, every metric,
overall and per class) and flags regressions by fixed rules (`RULES`, docs/metrics.md), and
only where both builds have enough samples for the figure to mean something:

- the accept rate (accepted / attempted) falls by more than 5 points, overall or in a class,
  and both builds attempted at least `MIN_ATTEMPTS` (20) samples in that scope;
- a metric with a direction moves the wrong way by more than its tolerance, and both builds
  measured it on at least `MIN_METRIC_SAMPLES` (20) accepted samples in that scope: 0.05
  absolute for precision, recall, density and coverage; for the Fréchet distance, KID, Vendi
  and the mean pairwise distance 10 % of the previous value, but never less than an absolute
  floor (so that a figure near zero does not flag noise). A metric the recipe gates is flagged
  when it crosses its gate's bound, whatever the tolerance (with the same minimum count).

A change past its tolerance on too few samples is not a regression: it is listed in
`held_back` with its sample counts. Reads only the previous build's report.json (no image,
no Parquet).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TREND_VERSION = 1
LATEST = "latest"
HISTORY = 20  # builds kept in the per-class accept-rate history (sparklines)
ACCEPT_RATE_DROP = 5.0  # points
MIN_ATTEMPTS = 20  # samples attempted in a scope (overall, a class), in both builds
MIN_CLASS_ATTEMPTS = MIN_ATTEMPTS  # the per-class minimum (the same number)
MIN_METRIC_SAMPLES = 20  # accepted samples a metric was measured on, in both builds
# metric -> (better direction, tolerance, tolerance kind, absolute floor of the tolerance)
DIRECTIONS: dict[str, tuple[str, float, str, float]] = {
    "precision": ("higher", 0.05, "absolute", 0.05),
    "recall": ("higher", 0.05, "absolute", 0.05),
    "density": ("higher", 0.05, "absolute", 0.05),
    "coverage": ("higher", 0.05, "absolute", 0.05),
    "frechet_distance": ("lower", 0.10, "relative", 0.02),
    "kid": ("lower", 0.10, "relative", 0.002),
    "vendi": ("higher", 0.10, "relative", 0.5),
    "mean_pairwise_distance": ("higher", 0.10, "relative", 0.01),
}
RULES = {
    "accept_rate_drop_points": ACCEPT_RATE_DROP,
    "min_attempts": MIN_ATTEMPTS,
    "min_class_attempts": MIN_CLASS_ATTEMPTS,
    "min_metric_samples": MIN_METRIC_SAMPLES,
    "metrics": {
        name: {"better": d, "tolerance": t, "kind": k, "absolute_floor": f}
        for name, (d, t, k, f) in DIRECTIONS.items()
    },
    "gated_metrics": "a gated metric is flagged when it crosses its gate's bound",
}


def previous_build(out: Path) -> Path | None:
    """The build `ROOT/latest` points to, when `out` is a different build under ROOT/builds/
    and that one holds a report.json; else None (not a published build, or the first)."""
    out = out.resolve()
    latest = out.parent.parent / LATEST
    if out.parent.name != "builds" or not latest.is_symlink():
        return None
    try:
        target = latest.resolve(strict=True)
    except OSError:
        return None
    if target == out or not (target / "report.json").is_file():
        return None
    return target


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(float(value)) else float(value)


def _rate(accepted: Any, attempted: Any) -> float | None:
    a, n = _num(accepted), _num(attempted)
    return None if a is None or not n else 100.0 * a / n


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None else int(n)


def _change(previous: Any, current: Any) -> dict[str, Any]:
    p, c = _num(previous), _num(current)
    return {"previous": p, "current": c, "delta": None if p is None or c is None else c - p}


def _attempts(report: dict[str, Any]) -> dict[str, int]:
    """Samples attempted per class: accepted + rejected (+ failed) from the report."""
    per_class = report.get("counts", {}).get("per_class", {})
    out = {c: int(v.get("accepted", 0)) for c, v in per_class.items()}
    for key, n in (report.get("rejects_by_class_and_reason") or {}).items():
        cls = key.split("/", 1)[0]
        out[cls] = out.get(cls, 0) + int(n)
    for cls, n in ((report.get("failures") or {}).get("by_class") or {}).items():
        out[cls] = out.get(cls, 0) + int(n)
    return out


def _overall_attempts(report: dict[str, Any]) -> int:
    counts = report.get("counts", {})
    return (
        int(counts.get("accepted", 0))
        + int(counts.get("rejected", 0))
        + int(counts.get("failed", 0) or 0)
    )


def tolerance(name: str, previous: float) -> float | None:
    """How far metric `name` may move the wrong way from `previous` before it regresses
    (None: a metric without a direction, never flagged by tolerance)."""
    if name not in DIRECTIONS:
        return None
    _, tol, kind, floor = DIRECTIONS[name]
    return tol if kind == "absolute" else max(tol * abs(previous), floor)


def _metric_regressed(name: str, change: dict[str, Any], gate: dict[str, Any] | None) -> bool:
    """Past tolerance (or across a gate), sample counts aside."""
    p, c, d = change["previous"], change["current"], change["delta"]
    if d is None or p is None or c is None:
        return False
    if gate:  # crossing a gate's bound is a regression, whatever the tolerance
        lo, hi = gate.get("min"), gate.get("max")
        if (lo is not None and p >= lo > c) or (hi is not None and p <= hi < c):
            return True
    limit = tolerance(name, p)
    if limit is None:
        return False
    worse = -d if DIRECTIONS[name][0] == "higher" else d
    return worse > limit


def _judge(
    change: dict[str, Any],
    past: bool,
    samples: tuple[int | None, int | None],
    minimum: int,
    scope: str,
    figure: str,
    regressions: list[dict[str, Any]],
    held_back: list[dict[str, Any]],
) -> None:
    """Set `change["regressed"]`: past its tolerance and both builds with at least `minimum`
    samples (`samples`: previous, current; None: not known, too few). A change past its
    tolerance on too few samples goes to `held_back` instead."""
    enough = all(n is not None and n >= minimum for n in samples)
    change["samples"] = {"previous": samples[0], "current": samples[1]}
    change["regressed"] = bool(past and enough)
    entry = {"scope": scope, "figure": figure, "previous": change["previous"]}
    entry["current"] = change["current"]
    if change["regressed"]:
        regressions.append(entry)
    elif past:
        held_back.append(
            {**entry, "n_previous": samples[0], "n_current": samples[1], "minimum": minimum}
        )


def _metric_samples(values: dict[str, Any], fallback: int | None) -> int | None:
    """The accepted samples a scope's metrics were measured on: `n_synthetic` when the
    metrics block says, else the scope's accepted count."""
    n = _num(values.get("n_synthetic"))
    if n is not None:
        return int(n)
    return fallback


def _metric_changes(
    previous: dict[str, Any] | None,
    current: dict[str, Any] | None,
    gates: dict[str, dict[str, Any]],
    scope: str,
    regressions: list[dict[str, Any]],
    held_back: list[dict[str, Any]] | None = None,
    accepted: tuple[int | None, int | None] = (None, None),
) -> dict[str, Any]:
    previous, current = previous or {}, current or {}
    held_back = [] if held_back is None else held_back
    samples = (
        _metric_samples(previous, accepted[0]),
        _metric_samples(current, accepted[1]),
    )
    out = {}
    for name in sorted(set(previous) | set(current)):
        if name.startswith("n_"):
            continue
        change = _change(previous.get(name), current.get(name))
        gate = (
            gates.get(name) if scope == "overall" or gates.get(name, {}).get("per_class") else None
        )
        past = _metric_regressed(name, change, gate)
        _judge(change, past, samples, MIN_METRIC_SAMPLES, scope, name, regressions, held_back)
        change["better"] = DIRECTIONS[name][0] if name in DIRECTIONS else None
        out[name] = change
    return out


class _Verdicts:
    """The regressions found so far and the changes held back (too few samples)."""

    def __init__(self) -> None:
        self.regressions: list[dict[str, Any]] = []
        self.held_back: list[dict[str, Any]] = []

    def rate(
        self, change: dict[str, Any], samples: tuple[int, int], minimum: int, scope: str
    ) -> None:
        """Judge an accept-rate change: a drop past ACCEPT_RATE_DROP points."""
        past = change["delta"] is not None and change["delta"] < -ACCEPT_RATE_DROP
        _judge(
            change, past, samples, minimum, scope, "accept_rate", self.regressions, self.held_back
        )

    def metrics(
        self,
        previous: dict[str, Any] | None,
        current: dict[str, Any] | None,
        gates: dict[str, dict[str, Any]],
        scope: str,
        accepted: tuple[int | None, int | None],
    ) -> dict[str, Any]:
        return _metric_changes(
            previous, current, gates, scope, self.regressions, self.held_back, accepted
        )


def _class_trends(
    current: dict[str, Any],
    previous: dict[str, Any],
    gates: dict[str, dict[str, Any]],
    verdicts: _Verdicts,
) -> dict[str, Any]:
    """Per class (this build's, then those only the previous build had): accepted, accept
    rate and every metric against the previous build."""
    cur_att, prev_att = _attempts(current), _attempts(previous)
    cur_pc = current.get("counts", {}).get("per_class", {})
    prev_pc = previous.get("counts", {}).get("per_class", {})
    cur_m, prev_m = current.get("metrics") or {}, previous.get("metrics") or {}
    per_class: dict[str, Any] = {}
    for cls in list(cur_pc) + [c for c in prev_pc if c not in cur_pc]:
        c_acc = (cur_pc.get(cls) or {}).get("accepted")
        p_acc = (prev_pc.get(cls) or {}).get("accepted")
        crate = _change(_rate(p_acc, prev_att.get(cls)), _rate(c_acc, cur_att.get(cls)))
        verdicts.rate(
            crate, (prev_att.get(cls, 0), cur_att.get(cls, 0)), MIN_CLASS_ATTEMPTS, f"class:{cls}"
        )
        per_class[cls] = {
            "accepted": _change(p_acc, c_acc),
            "accept_rate": crate,
            "metrics": verdicts.metrics(
                (prev_m.get("per_class") or {}).get(cls),
                (cur_m.get("per_class") or {}).get(cls),
                gates,
                f"class:{cls}",
                (_int(p_acc), _int(c_acc)),
            ),
        }
    return per_class


def _history(
    previous: dict[str, Any], per_class: dict[str, Any], rate: dict[str, Any]
) -> dict[str, Any]:
    """The accept rates of the last HISTORY builds, overall and per class: the previous
    build's history (else its own rate), then this build's."""
    past_history = (previous.get("trend") or {}).get("history") or {}
    history_prev = past_history.get("accept_rate", {})
    history: dict[str, list[float | None]] = {}
    for cls in per_class:
        past = list(history_prev.get(cls) or [])
        if not past:
            past = [per_class[cls]["accept_rate"]["previous"]]
        history[cls] = ([*past, per_class[cls]["accept_rate"]["current"]])[-HISTORY:]
    overall_past = list(past_history.get("overall") or [])
    overall_history = ((overall_past or [rate["previous"]]) + [rate["current"]])[-HISTORY:]
    return {"overall": overall_history, "accept_rate": history}


def build_trend(
    current: dict[str, Any],
    previous: dict[str, Any],
    previous_dir: Path,
    gates: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The trend block of report.json: `current` (this report) against `previous` (the
    previously published build's report.json); `gates`: the recipe's `validation.metrics`."""
    gates = gates or {}
    verdicts = _Verdicts()
    cur_counts, prev_counts = current.get("counts", {}), previous.get("counts", {})
    counts = {
        k: _change(prev_counts.get(k), cur_counts.get(k))
        for k in ("planned", "accepted", "rejected", "failed")
    }
    rate = _change(
        _rate(prev_counts.get("accepted"), _overall_attempts(previous)),
        _rate(cur_counts.get("accepted"), _overall_attempts(current)),
    )
    verdicts.rate(
        rate, (_overall_attempts(previous), _overall_attempts(current)), MIN_ATTEMPTS, "overall"
    )
    metrics = verdicts.metrics(
        (previous.get("metrics") or {}).get("overall"),
        (current.get("metrics") or {}).get("overall"),
        gates,
        "overall",
        (_int(prev_counts.get("accepted")), _int(cur_counts.get("accepted"))),
    )
    per_class = _class_trends(current, previous, gates, verdicts)
    return {
        "trend_version": TREND_VERSION,
        "previous": {
            "output": previous_dir.name,  # a sibling under builds/: no path of this machine
            "recipe_name": previous.get("recipe_name"),
            "recipe_hash": previous.get("recipe_hash"),
            "status": previous.get("status"),
            "finished_at": (previous.get("timing") or {}).get("finished_at"),
        },
        "same_recipe": previous.get("recipe_hash") == current.get("recipe_hash"),
        "counts": counts,
        "accept_rate": rate,
        "metrics": metrics,
        "per_class": per_class,
        "history": _history(previous, per_class, rate),
        "regressions": verdicts.regressions,
        "held_back": verdicts.held_back,
        "rules": RULES,
    }


def read_previous_report(previous_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((previous_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(regressions: list[dict[str, Any]]) -> str:
    """Regressions as one line: `overall accept_rate 100 -> 44.4; class:one precision ...`."""

    def short(v: Any) -> str:
        return "–" if v is None else f"{v:.4g}"

    return "; ".join(
        f"{r['scope']} {r['figure']} {short(r.get('previous'))} -> {short(r.get('current'))}"
        for r in regressions
    )


def report_regressions(out: Path) -> list[dict[str, Any]] | None:
    """The regressions of the trend in `out`'s report.json ([] when none), or None when the
    report has no trend (not a published build, or the first one)."""
    report = read_previous_report(out)
    trend = (report or {}).get("trend")
    if not isinstance(trend, dict):
        return None
    return list(trend.get("regressions") or [])
