"""Trend across scheduled builds: this build's report against the previously published one.

A published build lives at `ROOT/builds/<time>-<hash>/`; until it is swapped in, `ROOT/latest`
points to the build before it. The report compares the two (counts, accept rate, every metric,
overall and per class) and flags regressions by fixed rules (`RULES`, docs/metrics.md):

- the accept rate (accepted / attempted) falls by more than 5 points, overall or in a class
  (a class only when both builds attempted at least 10 of its samples);
- a metric with a direction moves the wrong way by more than its tolerance: 0.05 absolute for
  precision, recall, density and coverage; 10 % of the previous value for the Fréchet distance,
  KID, Vendi and the mean pairwise distance. A metric the recipe gates is always flagged when
  it crosses its gate's bound, whatever the tolerance.

Reads only the previous build's report.json (no image, no Parquet).
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
MIN_CLASS_ATTEMPTS = 10
# metric -> (better direction, tolerance, tolerance kind)
DIRECTIONS: dict[str, tuple[str, float, str]] = {
    "precision": ("higher", 0.05, "absolute"),
    "recall": ("higher", 0.05, "absolute"),
    "density": ("higher", 0.05, "absolute"),
    "coverage": ("higher", 0.05, "absolute"),
    "frechet_distance": ("lower", 0.10, "relative"),
    "kid": ("lower", 0.10, "relative"),
    "vendi": ("higher", 0.10, "relative"),
    "mean_pairwise_distance": ("higher", 0.10, "relative"),
}
RULES = {
    "accept_rate_drop_points": ACCEPT_RATE_DROP,
    "min_class_attempts": MIN_CLASS_ATTEMPTS,
    "metrics": {
        name: {"better": d, "tolerance": t, "kind": k} for name, (d, t, k) in DIRECTIONS.items()
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


def _metric_regressed(name: str, change: dict[str, Any], gate: dict[str, Any] | None) -> bool:
    p, c, d = change["previous"], change["current"], change["delta"]
    if d is None or p is None or c is None:
        return False
    if gate:  # crossing a gate's bound is a regression, whatever the tolerance
        lo, hi = gate.get("min"), gate.get("max")
        if (lo is not None and p >= lo > c) or (hi is not None and p <= hi < c):
            return True
    if name not in DIRECTIONS:
        return False
    better, tolerance, kind = DIRECTIONS[name]
    worse = -d if better == "higher" else d
    limit = tolerance if kind == "absolute" else tolerance * abs(p)
    return worse > limit


def _metric_changes(
    previous: dict[str, Any] | None,
    current: dict[str, Any] | None,
    gates: dict[str, dict[str, Any]],
    scope: str,
    regressions: list[dict[str, Any]],
) -> dict[str, Any]:
    previous, current = previous or {}, current or {}
    out = {}
    for name in sorted(set(previous) | set(current)):
        if name.startswith("n_"):
            continue
        change = _change(previous.get(name), current.get(name))
        gate = (
            gates.get(name) if scope == "overall" or gates.get(name, {}).get("per_class") else None
        )
        change["regressed"] = _metric_regressed(name, change, gate)
        change["better"] = DIRECTIONS[name][0] if name in DIRECTIONS else None
        if change["regressed"]:
            regressions.append(
                {"scope": scope, "figure": name, **{k: change[k] for k in ("previous", "current")}}
            )
        out[name] = change
    return out


def build_trend(
    current: dict[str, Any],
    previous: dict[str, Any],
    previous_dir: Path,
    gates: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The trend block of report.json: `current` (this report) against `previous` (the
    previously published build's report.json); `gates`: the recipe's `validation.metrics`."""
    gates = gates or {}
    regressions: list[dict[str, Any]] = []
    cur_counts, prev_counts = current.get("counts", {}), previous.get("counts", {})
    counts = {
        k: _change(prev_counts.get(k), cur_counts.get(k))
        for k in ("planned", "accepted", "rejected", "failed")
    }
    rate = _change(
        _rate(prev_counts.get("accepted"), _overall_attempts(previous)),
        _rate(cur_counts.get("accepted"), _overall_attempts(current)),
    )
    rate["regressed"] = rate["delta"] is not None and rate["delta"] < -ACCEPT_RATE_DROP
    if rate["regressed"]:
        regressions.append(
            {
                "scope": "overall",
                "figure": "accept_rate",
                "previous": rate["previous"],
                "current": rate["current"],
            }
        )
    cur_m, prev_m = current.get("metrics") or {}, previous.get("metrics") or {}
    metrics = _metric_changes(
        prev_m.get("overall"), cur_m.get("overall"), gates, "overall", regressions
    )

    cur_att, prev_att = _attempts(current), _attempts(previous)
    cur_pc = cur_counts.get("per_class", {})
    prev_pc = prev_counts.get("per_class", {})
    history_prev = ((previous.get("trend") or {}).get("history") or {}).get("accept_rate", {})
    per_class: dict[str, Any] = {}
    for cls in list(cur_pc) + [c for c in prev_pc if c not in cur_pc]:
        c_acc = (cur_pc.get(cls) or {}).get("accepted")
        p_acc = (prev_pc.get(cls) or {}).get("accepted")
        crate = _change(_rate(p_acc, prev_att.get(cls)), _rate(c_acc, cur_att.get(cls)))
        enough = min(cur_att.get(cls, 0), prev_att.get(cls, 0)) >= MIN_CLASS_ATTEMPTS
        crate["regressed"] = bool(
            enough and crate["delta"] is not None and crate["delta"] < -ACCEPT_RATE_DROP
        )
        if crate["regressed"]:
            regressions.append(
                {
                    "scope": f"class:{cls}",
                    "figure": "accept_rate",
                    "previous": crate["previous"],
                    "current": crate["current"],
                }
            )
        per_class[cls] = {
            "accepted": _change(p_acc, c_acc),
            "accept_rate": crate,
            "metrics": _metric_changes(
                (prev_m.get("per_class") or {}).get(cls),
                (cur_m.get("per_class") or {}).get(cls),
                gates,
                f"class:{cls}",
                regressions,
            ),
        }
    history: dict[str, list[float | None]] = {}
    for cls in per_class:
        past = list(history_prev.get(cls) or [])
        if not past:
            past = [per_class[cls]["accept_rate"]["previous"]]
        history[cls] = ([*past, per_class[cls]["accept_rate"]["current"]])[-HISTORY:]
    overall_past = list(((previous.get("trend") or {}).get("history") or {}).get("overall") or [])
    overall_history = ((overall_past or [rate["previous"]]) + [rate["current"]])[-HISTORY:]
    return {
        "trend_version": TREND_VERSION,
        "previous": {
            "output": str(previous_dir),
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
        "history": {"overall": overall_history, "accept_rate": history},
        "regressions": regressions,
        "rules": RULES,
    }


def read_previous_report(previous_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((previous_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
