"""The output directory of one build: its state, its lock, its finished shards, publishing.

Nothing on disk is trusted without a check: a shard counts as finished only when its stats
file parses, names this build's recipe, and every file it lists has that size and sha256; a
manifest counts only when the same holds for every shard and file it lists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    STATE_DIR,
    STATE_NAME,
    BuildState,
    FileInfo,
    Manifest,
    ShardStats,
    published_recipe,
    shard_files,
    shard_stem,
    stats_name,
)
from synthgen.schemas.recipe import Recipe, is_url, shown_url
from synthgen.schemas.records import PATH_KEYS, public_path
from synthgen.storage.atomic import atomic_write, swap_symlink, write_bytes_atomic
from synthgen.storage.hashing import file_sha256, folder_sha256

logger = logging.getLogger(__name__)

LATEST = "latest"
LOCK_NAME = "lock"


class BuildError(RuntimeError):
    """A build cannot start or did not complete; the message says why."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def state_path(out: Path) -> Path:
    return out / STATE_DIR / STATE_NAME


def read_state(out: Path) -> BuildState | None:
    try:
        return BuildState.model_validate_json(state_path(out).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


@contextlib.contextmanager
def exclusive_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (a `.synthgen/lock` file); refuse a second holder.

    The lock is released by the kernel when the process dies, so a killed build never
    leaves a stale lock behind.
    """
    lock_dir = folder / STATE_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(
                f"{folder}: another synthgen process is using this {what}; "
                "wait for it to finish (only one build may write here at a time)"
            ) from None
        yield
    finally:
        os.close(fd)


def check_entries(out: Path) -> None:
    """Refuse symlinks and non-files where a build keeps its files (never follow them)."""
    for p in sorted(out.iterdir()):
        if p.name == STATE_DIR:
            continue
        if p.is_symlink():
            raise BuildError(f"{p}: a symbolic link inside a build directory is refused")
        if p.suffix in (".tar", ".parquet", ".json", ".html") and not p.is_file():
            raise BuildError(f"{p}: expected a regular file")


def holds_anything(out: Path) -> bool:
    """Whether `out` holds more than a lock file (a fresh directory holds nothing else)."""
    if not out.exists():
        return False
    return any(p.name != STATE_DIR for p in out.iterdir()) or state_path(out).exists()


def check_output_dir(out: Path, resume: bool) -> None:
    """Refuse an output path that is not a directory, or a non-empty one without --resume."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BuildError(f"{out}: output path exists and is not a directory")
    if holds_anything(out) and not resume:
        raise BuildError(
            f"{out}: output directory is not empty; pass --resume to finish an interrupted "
            "build there, or choose a new directory"
        )
    if holds_anything(out) and not state_path(out).is_file():
        raise BuildError(
            f"{out}: cannot resume: not a synthgen build (no {STATE_DIR}/{STATE_NAME})"
        )


def check_resumable(out: Path, recipe: Recipe, resume: bool) -> BuildState | None:
    """The refusals about `out` that need no model: not a directory, not empty without
    --resume, not a synthgen build, another recipe (named field by field). Its state when
    there is a build to resume; None for a new one. Reads only."""
    check_output_dir(out, resume)
    if not holds_anything(out):
        return None
    check_entries(out)
    state = read_state(out)
    if state is None:
        raise BuildError(
            f"{out}: cannot resume: not a synthgen build (no readable {STATE_DIR}/{STATE_NAME})"
        )
    if state.recipe_hash != recipe.hash:
        diff = describe_diff(recipe_diff(state.recipe, recipe.model_dump(mode="json")))
        hashes = f"recipe hash {state.recipe_hash[:12]} there, {recipe.hash[:12]} now"
        raise BuildError(
            f"{out}: cannot resume: the recipe changed since this build started "
            f"({diff or hashes}); build into a new directory, or undo the change"
        )
    return state


def prepare_output(
    out: Path,
    recipe: Recipe,
    identity: dict[str, str],
    resume: bool,
    places: tuple[str | None, dict[str, str]] = (None, {}),
) -> BuildState:
    """Create or reopen the output folder; returns its state. Nothing is written on refusal.

    `identity` (model and scorer content hashes) is part of what a resumed build must match:
    the recipe names paths, the identity pins what was behind them. `places` (the recipe's
    folder; each local path it names -> as published) stays in the private state, for
    commands that look for the build's inputs later (`ResolvedRecipe.places`).
    """
    state = check_resumable(out, recipe, resume)
    if state is not None:
        changed = sorted(k for k in identity if state.identity.get(k) != identity[k])
        if changed:
            raise BuildError(
                f"{out}: cannot resume: the content behind the recipe changed since this "
                f"build started ({', '.join(changed)} differ); its finished shards were made "
                "with other weights or configs; build into a new directory"
            )
        return state
    out.mkdir(parents=True, exist_ok=True)
    (out / STATE_DIR).mkdir(exist_ok=True)
    state = BuildState(
        recipe_hash=recipe.hash,
        recipe=recipe.model_dump(mode="json"),
        created_at=utc_now(),
        identity=identity,
        recipe_dir=places[0],
        paths=places[1],
    )
    write_bytes_atomic(state_path(out), state.to_json())
    return state


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def recipe_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted field whose value differs between two recipes (as JSON dumps):
    field -> (before, after); a field missing on one side is None there.

    `before` may be a manifest's published copy (`published_recipe`): a path field there
    equals a path of `after` that publishes as it (an absolute path recorded by its name)."""
    a, b = _flatten(before), _flatten(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if not _same(k, a, b)}


def _same(key: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    x, y = a.get(key), b.get(key)
    if x == y:
        return True
    last = key.rsplit(".", 1)[-1]
    if isinstance(x, str) and isinstance(y, str) and last in PATH_KEYS:
        return x == public_path(y)
    if isinstance(x, list) and isinstance(y, list):  # adapters, ControlNets: lists of blocks
        return x == published_recipe({"_": y})["_"]
    return False


def describe_diff(diff: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    """`field: old -> new` for the first `limit` changed fields (long values shortened, URLs
    without credentials or query)."""

    def short(value: Any) -> str:
        if isinstance(value, str) and is_url(value):
            value = shown_url(value)
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    parts = [f"{k}: {short(a)} -> {short(b)}" for k, (a, b) in list(diff.items())[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return "; ".join(parts)


def recorded_identity(build: Path, manifest: Manifest) -> dict[str, str]:
    """The identity a complete build was made with: the model's and every scorer's content
    hash from its manifest, and whatever else its `.synthgen/state.json` recorded (a build
    pulled from a store has none: then the manifest's part alone)."""
    out = {"model_sha256": manifest.model.sha256}
    for p in manifest.scorers:
        if p.get("sha256"):
            out[f"scorer_{p['name']}_sha256"] = str(p["sha256"])
    state = read_state(build)
    if state is not None and state.recipe_hash == manifest.recipe_hash:
        out |= state.identity
    return out


def identity_changes(recorded: dict[str, str], now: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The content hashes that differ: key -> (recorded, now), for every key both record
    (an older build may record fewer; the model's hash is always recorded)."""
    return {
        k: (recorded[k], now[k])
        for k in sorted(recorded.keys() & now.keys())
        if recorded[k] != now[k]
    }


def _file_matches(path: Path, info: FileInfo) -> bool:
    if path.is_symlink() or not path.is_file() or path.stat().st_size != info.bytes:
        return False
    return file_sha256(path) == info.sha256


def finished_shard(out: Path, shard: int, recipe_hash: str | Collection[str]) -> ShardStats | None:
    """A shard's stats if the shard is complete and its files match them; else None.

    `recipe_hash`: the build's recipe hash, or every hash of an extended build's lineage.
    """
    hashes = {recipe_hash} if isinstance(recipe_hash, str) else set(recipe_hash)
    path = out / stats_name(shard)
    if path.is_symlink() or not path.is_file():
        return None
    try:
        stats = ShardStats.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError, OSError):
        return None
    if stats.shard != shard or stats.recipe_hash not in hashes:
        return None
    if not _shard_names(shard, stats.files):
        return None
    if not all(_file_matches(out / name, info) for name, info in stats.files.items()):
        return None
    return stats


def take_file(src: Path, dest: Path, info: FileInfo | None = None) -> None:
    """Put `src` at `dest` as a hard link (same filesystem) or an atomic copy; check its hash.

    Build files are never changed in place (always replaced by rename), so a hard link
    shares bytes without sharing later changes.
    """
    if dest.exists() and (info is None or _file_matches(dest, info)):
        return
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        with src.open("rb") as f, atomic_write(dest) as g:
            shutil.copyfileobj(f, g)
    if info is not None and not _file_matches(dest, info):
        dest.unlink(missing_ok=True)
        raise BuildError(f"{src}: differs from its build's manifest (sha256 or size)")


def _shard_names(shard: int, names: Collection[str]) -> bool:
    """Whether `names` are a shard's data files: its `ShardFiles` (the tar and the Parquet)
    and any other file its shard writer adds, each named `{shard:05d}.<ext>`."""
    stem = shard_stem(shard)
    ours = all(n.partition(".")[0] == stem and "/" not in n for n in names)
    return ours and set(shard_files(shard)) <= set(names)


def discard_shard(out: Path, shard: int) -> None:
    """Remove a shard's stats and data files (those its stats list, and its `ShardFiles`)."""
    path = out / stats_name(shard)
    names = set(shard_files(shard))
    try:
        listed = ShardStats.model_validate_json(path.read_bytes()).files
        names |= {n for n in listed if _shard_names(shard, [n, *shard_files(shard)])}
    except (ValidationError, ValueError, OSError):
        pass
    path.unlink(missing_ok=True)
    for name in sorted(names):
        (out / name).unlink(missing_ok=True)


def verified_manifest(out: Path, state: BuildState) -> Manifest | None:
    """The build's manifest if it is this build's and every file it lists matches; else None.

    A manifest that names another recipe, or a listed file that is missing or differs, means
    the directory does not hold what the manifest says: the manifest is set aside (renamed)
    so the build can redo what is missing, and the reason is logged.
    """
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    manifest, reason = _checked_manifest(out, state.recipe_hash)
    if reason is None:
        return manifest
    stale = path.with_name(f"{MANIFEST_NAME}.untrusted-{utc_now().replace(':', '')}")
    os.replace(path, stale)
    logger.warning("%s: manifest not trusted (%s); moved to %s", out, reason, stale.name)
    return None


def _checked_manifest(out: Path, recipe_hash: str) -> tuple[Manifest | None, str | None]:
    """The manifest of `out` and None, or why it is not trusted (reads only)."""
    path = out / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError, OSError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    if manifest.recipe_hash != recipe_hash:
        return manifest, f"it belongs to recipe {manifest.recipe_hash[:12]}"
    listed = {**{n: i for s in manifest.shards for n, i in s.files.items()}, **manifest.files}
    bad = sorted(n for n, info in listed.items() if not _file_matches(out / n, info))
    if bad:
        return manifest, f"listed file(s) missing or changed: {', '.join(bad[:5])}"
    return manifest, None


def finished_build(
    out: Path, recipe: Recipe, model_path: Path, after_manifest: Collection[str]
) -> Manifest | None:
    """The manifest of a complete build of `recipe` in `out` with nothing left to do: state
    and manifest this recipe's, every listed file matching, the model folder's content hash
    the one the build recorded, and every file of `after_manifest` there. Reads only; None
    otherwise (the full path then decides, and says why). Scorer folders are not hashed
    here: nothing is written, so nothing can mix with what they would score."""
    state = read_state(out)
    if state is None or state.recipe_hash != recipe.hash or not (out / MANIFEST_NAME).is_file():
        return None
    manifest, reason = _checked_manifest(out, recipe.hash)
    if reason is not None or manifest is None or manifest.status != "complete":
        return None
    if not all((out / name).is_file() for name in after_manifest):
        return None
    recorded = state.identity.get("model_sha256")
    if recorded is not None and (not model_path.is_dir() or folder_sha256(model_path) != recorded):
        return None
    return manifest


def check_publish_root(root: Path) -> None:
    """Refuse a publish root that is itself a build (a manifest or build state at its top):
    `latest` inside it would name a build that readers of the folder never reach."""
    for name in (MANIFEST_NAME, f"{STATE_DIR}/{STATE_NAME}"):
        if (root / name).exists():
            raise BuildError(
                f"{root}: is a build ({name} at its top), not a publish root; --publish "
                f"writes ROOT/builds/<version>/ and ROOT/{LATEST}: choose another root"
            )


def versioned_output(root: Path, recipe: Recipe, resume: bool) -> Path:
    """The build folder under ROOT/builds/ for a published build.

    With `resume`, the newest build of the same recipe that is not yet published (unfinished,
    or finished but never swapped in) is continued, and a `latest` that is already this
    recipe's build is returned as it is. Otherwise a new folder `<UTC time>-<recipe hash>`.
    """
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise BuildError(f"{root}: publish root exists and is not a directory")
    check_publish_root(root)
    latest = root / LATEST
    if latest.exists() and not latest.is_symlink():
        raise BuildError(
            f"{latest}: exists and is not a symbolic link; synthgen swaps `latest` as a link "
            "to the newest build: move it away first"
        )
    builds = root / "builds"
    if resume:
        if latest.is_symlink():
            current = latest.resolve()
            state = read_state(current)
            if state is not None and state.recipe_hash == recipe.hash:
                return current
        if builds.is_dir():
            published = latest.resolve() if latest.is_symlink() else None
            candidates = [
                d
                for d in sorted(builds.iterdir())
                if d.is_dir()
                and not d.is_symlink()
                and d != published
                and (s := read_state(d)) is not None
                and s.recipe_hash == recipe.hash
            ]
            if candidates:
                return candidates[-1]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return builds / f"{stamp}-{recipe.hash[:12]}"


def publish(root: Path, build_dir: Path) -> Path:
    """Swap ROOT/latest to this complete build in one atomic step."""
    swap_symlink(root / LATEST, f"builds/{build_dir.name}")
    return root / LATEST


def prune(root: Path, keep: int, dry_run: bool = False) -> list[Path]:
    """Remove all but the `keep` newest builds under ROOT/builds; returns what was removed.

    Never removes the build `latest` points to, nor a build another process holds the lock
    of (one being written). Builds are ordered by their folder name, which starts with the
    UTC time the build started.
    """
    if keep < 1:
        raise BuildError("prune: --keep must be at least 1")
    builds = root / "builds"
    if not builds.is_dir():
        raise BuildError(f"{root}: not a publish root (no builds/ folder)")
    latest = root / LATEST
    current = latest.resolve() if latest.is_symlink() else None
    folders = sorted(d for d in builds.iterdir() if d.is_dir() and not d.is_symlink())
    removed = []
    for folder in folders[: max(0, len(folders) - keep)]:
        if folder == current:
            continue
        try:
            with exclusive_lock(folder, "build"):
                if not dry_run:
                    shutil.rmtree(folder)
        except BuildError:
            logger.info("prune: %s is in use; kept", folder.name)
            continue
        removed.append(folder)
    return removed
