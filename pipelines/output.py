"""The output directory of one build: its state, its lock, its finished shards, publishing.

Nothing on disk is trusted without a check: a shard counts as finished only when its stats
file parses, names this build's recipe, and every file it lists has that size and sha256; a
manifest counts only when the same holds for every shard and file it lists.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    STATE_DIR,
    STATE_NAME,
    BuildState,
    FileInfo,
    Manifest,
    ShardStats,
    shard_files,
    stats_name,
)
from synthgen.schemas.recipe import Recipe
from synthgen.storage.atomic import atomic_write, swap_symlink, write_bytes_atomic
from synthgen.storage.hashing import file_sha256

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


def prepare_output(out: Path, recipe: Recipe, identity: dict[str, str], resume: bool) -> BuildState:
    """Create or reopen the output folder; returns its state. Nothing is written on refusal.

    `identity` (model and scorer content hashes) is part of what a resumed build must match:
    the recipe names paths, the identity pins what was behind them.
    """
    check_output_dir(out, resume)
    if holds_anything(out):
        check_entries(out)
        state = read_state(out)
        if state is None:
            raise BuildError(
                f"{out}: cannot resume: not a synthgen build (no readable {STATE_DIR}/{STATE_NAME})"
            )
        if state.recipe_hash != recipe.hash:
            raise BuildError(
                f"{out}: cannot resume: the recipe changed since this build started "
                f"(recipe hash {state.recipe_hash[:12]} there, {recipe.hash[:12]} now); "
                "build into a new directory"
            )
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
    )
    write_bytes_atomic(state_path(out), state.to_json())
    return state


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
    if set(stats.files) != set(shard_files(shard)):
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


def discard_shard(out: Path, shard: int) -> None:
    (out / stats_name(shard)).unlink(missing_ok=True)
    for name in shard_files(shard):
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
    reason = None
    manifest = None
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError, OSError) as exc:
        reason = f"unreadable ({type(exc).__name__})"
    if manifest is not None and manifest.recipe_hash != state.recipe_hash:
        reason = f"it belongs to recipe {manifest.recipe_hash[:12]}"
    if manifest is not None and reason is None:
        listed = {
            **{n: i for s in manifest.shards for n, i in s.files.items()},
            **manifest.files,
        }
        bad = sorted(n for n, info in listed.items() if not _file_matches(out / n, info))
        if bad:
            reason = f"listed file(s) missing or changed: {', '.join(bad[:5])}"
    if reason is None:
        return manifest
    stale = path.with_name(f"{MANIFEST_NAME}.untrusted-{utc_now().replace(':', '')}")
    os.replace(path, stale)
    logger.warning("%s: manifest not trusted (%s); moved to %s", out, reason, stale.name)
    return None


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
