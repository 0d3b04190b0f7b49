"""What a scheduler asks about a build: `synthgen status`, the metrics file, the last error.

Everything here reads files only (no model library is imported), so a status answer or a
metrics file costs a fraction of a second. Stats files are parsed, not hashed: `status`
says what a build directory holds; `validate` says whether it is intact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synthgen.pipelines.output import LATEST, read_state
from synthgen.schemas.manifest import MANIFEST_NAME, STATE_DIR, STATE_NAME, Manifest, ShardStats
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from synthgen.storage.atomic import write_bytes_atomic

ERROR_NAME = "last_error.json"  # under .synthgen/: the error that ended the last attempt


def record_error(out: Path, command: str, message: str, at: str) -> None:
    """Keep the error that ended a build attempt in a directory that already is a build
    (it has a state file); a directory the build never started in is left untouched."""
    if not (out / STATE_DIR / STATE_NAME).is_file():
        return
    data = {"command": command, "error": message, "at": at}
    write_bytes_atomic(out / STATE_DIR / ERROR_NAME, json.dumps(data, indent=2).encode())


def clear_error(out: Path) -> None:
    (out / STATE_DIR / ERROR_NAME).unlink(missing_ok=True)


def build_status(location: Path) -> dict[str, Any]:
    """The state of a build directory, or of a publish root's `latest` and its unfinished
    builds: complete or not, shards written, shards pending (when the plan is known), the
    last recorded error."""
    if (location / LATEST).is_symlink() or (location / "builds").is_dir():
        return _root_status(location)
    return _dir_status(location)


def _root_status(root: Path) -> dict[str, Any]:
    latest = root / LATEST
    current = latest.resolve() if latest.is_symlink() else None
    builds = root / "builds"
    unfinished = []
    if builds.is_dir():
        for d in sorted(builds.iterdir()):
            started = (d / STATE_DIR / STATE_NAME).is_file()
            done = (d / MANIFEST_NAME).is_file()
            if d.is_dir() and not d.is_symlink() and d != current and started and not done:
                unfinished.append(_dir_status(d))
    return {
        "root": str(root),
        "latest": _dir_status(current) if current is not None else None,
        "unfinished": unfinished,
        "complete": current is not None and _dir_status(current)["complete"],
    }


def _dir_status(out: Path) -> dict[str, Any]:
    state = read_state(out)
    manifest = None
    if (out / MANIFEST_NAME).is_file():
        try:
            manifest = Manifest.model_validate_json((out / MANIFEST_NAME).read_bytes())
        except (ValidationError, ValueError, OSError):
            manifest = None
    written = _written(out)
    planned = _planned_shards(state.recipe) if state is not None else None
    error = None
    try:
        error = json.loads((out / STATE_DIR / ERROR_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        error = None
    return {
        "dir": str(out),
        "build": state is not None or manifest is not None,
        "complete": manifest is not None and manifest.status == "complete",
        "status": manifest.status if manifest is not None else "incomplete",
        "recipe_hash": state.recipe_hash if state is not None else None,
        "shards_written": len(written),
        "shards_pending": None if planned is None else max(0, planned - len(written)),
        "accepted": sum(s.accepted for s in written.values()),
        "rejected": sum(s.rejected for s in written.values()),
        "last_error": None if manifest is not None and manifest.status == "complete" else error,
    }


def _written(out: Path) -> dict[int, ShardStats]:
    done = {}
    for path in out.glob("*_stats.json"):
        try:
            stats = ShardStats.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError, OSError):
            continue
        done[stats.shard] = stats
    return done


def _planned_shards(recipe: dict[str, Any]) -> int | None:
    """Shards a fixed-count build plans; None where rounds decide (balancing)."""
    try:
        r = recipe_from_dict(recipe)
    except RecipeError:
        return None
    if r.balance is not None or r.count_per_class is None:
        return None
    return math.ceil(r.count_per_class * len(r.classes) / r.output.shard_size)


def format_status(status: dict[str, Any]) -> list[str]:
    """Lines for people."""
    if "root" in status:
        lines = [f"{status['root']}: publish root"]
        latest = status["latest"]
        lines.append("  latest: none" if latest is None else "  latest: " + _dir_line(latest))
        lines += ["  unfinished: " + _dir_line(d) for d in status["unfinished"]]
        return lines
    return [_dir_line(status)]


def _dir_line(d: dict[str, Any]) -> str:
    if not d["build"]:
        return f"{d['dir']}: not a synthgen build"
    pending = "" if d["shards_pending"] is None else f", {d['shards_pending']} pending"
    line = (
        f"{d['dir']}: {'complete' if d['complete'] else d['status']}; "
        f"{d['shards_written']} shard(s) written{pending}; "
        f"{d['accepted']} accepted, {d['rejected']} rejected"
    )
    if d["last_error"]:
        line += f"; last error ({d['last_error'].get('at')}): {d['last_error'].get('error')}"
    return line


# -- the metrics file -----------------------------------------------------------------------
_METRICS = (
    # name, type, help, summary key
    (
        "synthgen_build_images_per_second",
        "gauge",
        "images generated per second",
        "images_per_second",
    ),
    ("synthgen_build_accept_rate", "gauge", "accepted / attempted samples", "accept_rate"),
    ("synthgen_build_seconds", "gauge", "wall-clock seconds of the build", "seconds"),
    ("synthgen_build_accepted_total", "counter", "accepted samples in the build", "accepted"),
    ("synthgen_build_rejected_total", "counter", "rejected samples in the build", "rejected"),
    ("synthgen_build_failed_total", "counter", "failed samples in the build", "failed"),
    ("synthgen_build_generated_total", "counter", "samples generated by this run", "generated_now"),
    ("synthgen_build_shards", "gauge", "shards in the build", "shards"),
    ("synthgen_build_reused_shards", "gauge", "shards reused, not rebuilt", "reused_shards"),
)


def metrics_text(summary: dict[str, Any]) -> str:
    """A build summary in the Prometheus text exposition format (version 0.0.4)."""
    labels = f'{{recipe_hash="{summary.get("recipe_hash", "")}"}}'
    lines = []
    ok = 1 if summary.get("ok") else 0
    lines += [
        "# HELP synthgen_build_success 1 when the build completed",
        "# TYPE synthgen_build_success gauge",
        f"synthgen_build_success{labels} {ok}",
    ]
    for name, kind, text, key in _METRICS:
        value = summary.get(key)
        if value is None:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{labels} {value:g}"]
    for key, value in sorted((summary.get("metrics") or {}).items()):
        name = "synthgen_" + "".join(c if c.isalnum() else "_" for c in key) + "_total"
        lines += [f"# TYPE {name} counter", f"{name}{labels} {value:g}"]
    return "\n".join(lines) + "\n"


def write_metrics(path: str | Path, summary: dict[str, Any]) -> None:
    """The summary's metrics at `path`, written atomically (a scraper never sees half)."""
    write_bytes_atomic(Path(path), metrics_text(summary).encode())
