"""Builds on object storage (`s3://`, `gs://`): a local working copy mirrored to the store.

A build whose output is a URL runs exactly like a local one, in a working folder under the
cache (`$SYNTHGEN_CACHE_DIR/work/`, default `~/.cache/synthgen/work/`), and every finished
file is uploaded as it appears, in an order that keeps the store readable at every moment:

1. `.synthgen/state.json` when the build starts;
2. each shard's tar and Parquet, whole, then its `_stats.json` (a shard counts as finished
   only when its stats object names files with those sizes and hashes);
3. after the gate, every other file of the build (report, card, balance index, ...);
4. `manifest.json` last of all: a build without it is not complete;
5. with a publish root, the `LATEST` pointer object, replaced by one PUT.

`--resume` reads what the store holds (not the local copy): finished shards are downloaded
and checked against their stats, so a build killed on one machine resumes on another. One
writer at a time is enforced by a lock object created with a conditional PUT; a lock whose
process is gone (same host) or whose heartbeat is older than `LOCK_STALE_S` is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from synthgen.pipelines.output import BuildError, utc_now
from synthgen.schemas.manifest import (
    MANIFEST_NAME,
    STATE_DIR,
    STATE_NAME,
    Manifest,
    ShardStats,
    shard_files,
)
from synthgen.schemas.names import name_problem
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.storage.hashing import file_sha256
from synthgen.storage.store import Store, StoreError, inside, is_remote, open_store

logger = logging.getLogger(__name__)

CACHE_ENV = "SYNTHGEN_CACHE_DIR"
POINTER = "LATEST"
LOCK_OBJECT = f"{STATE_DIR}/lock.json"
LOCK_STALE_S = 600.0
HEARTBEAT_S = 60.0
STATE_OBJECT = f"{STATE_DIR}/{STATE_NAME}"
# Never mirrored: the local lock, progress counters, staging (re-made on resume), temp files.
LOCAL_ONLY = (f"{STATE_DIR}/lock", f"{STATE_DIR}/progress/", f"{STATE_DIR}/staging/")


def cache_root() -> Path:
    """`$SYNTHGEN_CACHE_DIR`, else `~/.cache/synthgen`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "synthgen"


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


def work_dir(url: str) -> Path:
    """The local working folder of the build at `url`."""
    return cache_root() / "work" / _url_key(url)


class RemoteLock:
    """One writer per store prefix: a lock object made with a conditional PUT."""

    def __init__(self, store: Store, what: str):
        self.store = store
        self.what = what
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
            }
        ).encode()

    def _stale(self) -> bool:
        try:
            held = json.loads(self.store.read_bytes(LOCK_OBJECT))
        except FileNotFoundError:
            return True
        except (ValueError, StoreError):
            return False
        if held.get("host") == socket.gethostname():
            try:
                os.kill(int(held.get("pid", 0)), 0)
            except ProcessLookupError:
                return True  # its process is gone (killed): the lock is left over
            except (PermissionError, ValueError):
                pass
        return time.time() - float(held.get("heartbeat", 0)) > LOCK_STALE_S

    def _held_by_another(self) -> BuildError:
        return BuildError(
            f"{self.store}: another synthgen process is using this {self.what}; "
            "wait for it to finish (only one build may write here at a time)"
        )

    def __enter__(self) -> RemoteLock:
        """1. the lock object created with a conditional PUT
        2. a stale lock (its process gone, or no heartbeat for LOCK_STALE_S) removed, and
           the conditional PUT tried once more: of two processes taking over, one wins
        3. the store must refuse a second conditional PUT, or it cannot lock at all"""
        if not self.store.create_bytes(LOCK_OBJECT, self._body()):
            if not self._stale():
                raise self._held_by_another()
            logger.info("%s: taking over a lock left by a process that is gone", self.store)
            self.store.delete([LOCK_OBJECT])
            if not self.store.create_bytes(LOCK_OBJECT, self._body()):
                raise self._held_by_another()
        if self.store.create_bytes(LOCK_OBJECT, self._body()):
            raise BuildError(
                f"{self.store}: this store does not honour conditional writes "
                "(If-None-Match), so synthgen cannot keep a second writer out; use a store "
                "that does (AWS S3, GCS, recent MinIO)"
            )
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _owner(self) -> str | None:
        try:
            return str(json.loads(self.store.read_bytes(LOCK_OBJECT)).get("owner"))
        except (FileNotFoundError, ValueError):
            return None

    def check(self) -> None:
        """Raise if another process took the lock over (this one stalled past LOCK_STALE_S)."""
        if self.lost:
            raise BuildError(
                f"{self.store}: the lock was taken over by another process while this build "
                "stalled; stopped before writing anything more"
            )

    def beat(self) -> bool:
        """One heartbeat: refresh the lock if this process still owns it; else mark it lost."""
        if self._owner() != self.owner:
            self.lost = True
            return False
        self.store.write_bytes(LOCK_OBJECT, self._body())
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(StoreError, OSError):
                if not self.beat():
                    return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(StoreError, OSError, ValueError):
            if json.loads(self.store.read_bytes(LOCK_OBJECT)).get("owner") == self.owner:
                self.store.delete([LOCK_OBJECT])


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


class Mirror:
    """Keeps a store prefix in step with the local working folder of one build."""

    def __init__(self, store: Store, local: Path, lock: RemoteLock | None = None):
        self.store = store
        self.local = local
        self.lock = lock  # the location's lock: no upload once another process holds it
        self.previous: Path | None = None  # the previously published build's report folder
        # name -> the local file the store holds a copy of, as (size, mtime, inode): build
        # files are only ever replaced (renamed over), never changed in place, so a file
        # whose stat is unchanged needs neither hashing nor uploading again.
        self.pushed: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    # -- start: the store is the truth ------------------------------------------------
    def pull(self, resume: bool) -> None:
        """Make the working folder hold what the store holds (refusals as for a folder).

        1. an empty store: a new build (any old working copy is discarded)
        2. a non-empty store needs `resume`, and must be a synthgen build
        3. a working copy of another build (other state) is discarded
        4. every finished shard downloaded and checked; every other file downloaded
        """
        listing = {n: s for n, s in self.store.listing().items() if n != LOCK_OBJECT}
        if not listing:
            shutil.rmtree(self.local, ignore_errors=True)
            self.local.mkdir(parents=True)
            return
        if not resume:
            raise BuildError(
                f"{self.store}: output location is not empty; pass --resume to finish an "
                "interrupted build there, or choose a new location"
            )
        if STATE_OBJECT not in listing:
            raise BuildError(
                f"{self.store}: cannot resume: not a synthgen build (no {STATE_OBJECT})"
            )
        state = self.store.read_bytes(STATE_OBJECT)
        local_state = self.local / STATE_OBJECT
        if not local_state.is_file() or local_state.read_bytes() != state:
            shutil.rmtree(self.local, ignore_errors=True)
        (self.local / STATE_DIR).mkdir(parents=True, exist_ok=True)
        self._download(STATE_OBJECT, listing[STATE_OBJECT])
        stats_names = sorted(n for n in listing if n.endswith("_stats.json") and "/" not in n)
        shard_data = {f for n in stats_names for f in shard_files(int(n.split("_")[0]))}
        for name in stats_names:
            self._pull_shard(name, listing)
        for name, size in listing.items():
            if name in shard_data or name in stats_names or name.startswith(LOCAL_ONLY):
                continue
            self._download(name, size)

    def _pull_shard(self, name: str, listing: dict[str, int]) -> None:
        try:
            stats = ShardStats.model_validate_json(self.store.read_bytes(name))
        except (ValidationError, ValueError):
            logger.warning(
                "%s/%s: unreadable shard stats; the shard will be rebuilt", self.store, name
            )
            return
        try:
            for fname, info in stats.files.items():
                if listing.get(fname) != info.bytes:
                    return  # incomplete in the store: the session rebuilds it
                self._download(fname, info.bytes, info.sha256)
        except BuildError as exc:
            logger.warning("%s; the shard will be rebuilt", exc)
            return
        self._download(name, listing[name])

    def _download(self, name: str, size: int, sha256: str | None = None) -> None:
        dest = inside(self.local, name, f"{self.store}/{name}")
        same_size = dest.is_file() and not dest.is_symlink() and dest.stat().st_size == size
        if same_size and (sha256 is None or file_sha256(dest) == sha256):
            self.pushed[name] = _stat_key(dest)
            return
        self.store.get_file(name, dest)
        if sha256 is not None and file_sha256(dest) != sha256:
            dest.unlink(missing_ok=True)
            raise BuildError(f"{self.store}/{name}: sha256 differs from the manifest or stats")
        self.pushed[name] = _stat_key(dest)

    # -- during and after the build: local -> store ---------------------------------------
    def push(self, *, final: bool = False) -> int:
        """Upload every local file the store lacks or holds differently; returns how many.

        Data files first, then shard stats, then (with `final`) the manifest. A manifest the
        store holds but the working copy set aside is removed from the store first.
        """
        with self._lock:
            if self.lock is not None:
                self.lock.check()
            if MANIFEST_NAME in self.pushed and not (self.local / MANIFEST_NAME).is_file():
                self.store.delete([MANIFEST_NAME])
                del self.pushed[MANIFEST_NAME]
            names = self._local_names()
            stats = [n for n in names if n.endswith("_stats.json") and "/" not in n]
            data = [n for n in names if n not in stats and n != MANIFEST_NAME]
            ordered = data + stats + ([MANIFEST_NAME] if final and MANIFEST_NAME in names else [])
            n = 0
            for name in ordered:
                path = self.local / name
                try:
                    key = _stat_key(path)
                except FileNotFoundError:
                    continue  # replaced or removed meanwhile
                if self.pushed.get(name) == key:
                    continue
                self.store.put_file(path, name)
                self.pushed[name] = key
                n += 1
            return n

    def _local_names(self) -> list[str]:
        if not self.local.is_dir():
            return []
        names = []
        for p in sorted(self.local.rglob("*")):
            if not p.is_file() or p.is_symlink() or p.name.startswith("."):
                continue
            name = p.relative_to(self.local).as_posix()
            if not name.startswith(LOCAL_ONLY):
                names.append(name)
        return names

    @contextlib.contextmanager
    def watch(self, every_s: float = 2.0) -> Iterator[None]:
        """Upload finished files while the body runs (a killed build loses little)."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def loop() -> None:
            while not stop.wait(every_s):
                try:
                    self.push()
                except (StoreError, OSError) as exc:  # retried at the next push
                    errors.append(exc)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        if errors:
            logger.info("%s: %d upload(s) retried later", self.store, len(errors))


# -- published roots on a store -------------------------------------------------------------
def read_pointer(root: Store) -> dict[str, str] | None:
    try:
        data = json.loads(root.read_bytes(POINTER))
    except FileNotFoundError:
        return None
    except ValueError:
        raise BuildError(f"{root}/{POINTER}: not a synthgen pointer (unreadable JSON)") from None
    if not isinstance(data, dict) or not str(data.get("build", "")).startswith("builds/"):
        raise BuildError(f"{root}/{POINTER}: not a synthgen pointer (no `build`)")
    build = str(data["build"])
    if build.count("/") != 1 or name_problem(build) is not None:
        raise BuildError(
            f"{root}/{POINTER}: refused: it names {build!r}, not a folder directly under "
            "builds/ (a pointer must stay inside its root)"
        )
    return data


def versioned_build(root: Store, recipe_hash: str, resume: bool) -> str:
    """The build folder name under ROOT/builds/ (the object-store twin of versioned_output)."""
    from datetime import UTC, datetime

    pointer = read_pointer(root)
    published = pointer["build"].split("/", 1)[1] if pointer else None
    if resume:
        if pointer and pointer.get("recipe_hash") == recipe_hash:
            assert published is not None
            return published
        states = sorted(
            n
            for n in root.listing("builds")
            if n.endswith(f"/{STATE_OBJECT}") and n.count("/") == 3
        )
        for name in reversed(states):
            folder = name.split("/")[1]
            if folder == published:
                continue
            try:
                if json.loads(root.read_bytes(name)).get("recipe_hash") == recipe_hash:
                    return folder
            except ValueError:
                continue
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{recipe_hash[:12]}"


def publish_pointer(root: Store, folder: str, manifest: Manifest) -> None:
    """Swap ROOT/LATEST to a complete build: one PUT of a small JSON object."""
    body = {
        "build": f"builds/{folder}",
        "recipe_hash": manifest.recipe_hash,
        "manifest_sha256": hashlib.sha256(
            root.read_bytes(f"builds/{folder}/{MANIFEST_NAME}")
        ).hexdigest(),
        "published_at": utc_now(),
    }
    root.write_bytes(POINTER, (json.dumps(body, indent=2) + "\n").encode())


def resolve_build(url: str) -> Store:
    """The build a URL names: itself when it holds a manifest, else what its LATEST names."""
    store = open_store(url)
    if store.exists(MANIFEST_NAME):
        return store
    pointer = read_pointer(store)
    if pointer is None:
        raise BuildError(f"{url}: no {MANIFEST_NAME} and no {POINTER}: not a complete build")
    return store.child(pointer["build"])


def pull_build(url: str) -> Path:
    """A complete build at `url` (or the one its LATEST names) as a checked local copy.

    Downloaded under the cache once; files already there with the manifest's sha256 are
    kept. Every file the manifest lists is checked against it.
    """
    store = resolve_build(url)
    local = cache_root() / "builds" / _url_key(store.url)
    local.mkdir(parents=True, exist_ok=True)
    raw = store.read_bytes(MANIFEST_NAME)
    try:
        manifest = Manifest.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        raise BuildError(f"{store}/{MANIFEST_NAME}: malformed manifest: {exc}") from None
    mirror = Mirror(store, local)
    listed = {n: i for s in manifest.shards for n, i in s.files.items()} | manifest.files
    listing = store.listing()
    for name, info in listed.items():
        if name not in listing:
            raise BuildError(f"{store}: {name} is listed in the manifest but missing")
        mirror._download(name, listing[name], info.sha256)
    for name, size in listing.items():
        if name not in listed and name != MANIFEST_NAME and not name.startswith(STATE_DIR):
            mirror._download(name, size)  # stats, report, card: read by validate and report
    (local / MANIFEST_NAME).write_bytes(raw)
    return local


def local_source(location: str) -> str:
    """A source location usable by the readers: remote objects are downloaded into the cache.

    A cached copy is used only while the object's version tag (size + ETag / generation)
    is the one it was downloaded at; objects gone from the store go from the cache too.
    """
    if not is_remote(location):
        return location
    store = open_store(location)
    dest = cache_root() / "sources" / _url_key(store.url)
    single = store.exists("")
    if single:
        name = store.url.rsplit("/", 1)[1]
        store = open_store(store.url.rsplit("/", 1)[0])
        versions = {n: v for n, v in store.versions(name).items() if n == name}
    else:
        versions = store.versions()
    if not versions:
        raise BuildError(f"{location}: no such object or prefix")
    record_path = dest / ".versions.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    for name, version in versions.items():
        if record.get(name) != version or not inside(dest, name).is_file():
            store.fetch(name, dest)
    for name in set(record) - set(versions):
        if name_problem(name) is None:  # the record is ours, but a cache can be edited
            inside(dest, name).unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(record_path, json.dumps(versions, sort_keys=True).encode())
    return str(dest / next(iter(versions))) if single else str(dest)


def source_location(base_dir: Path, raw: str) -> str:
    """Where the readers find a source named in a recipe: a path relative to the recipe, a
    shard pattern, or an object-store URL (downloaded once into the cache, pattern kept)."""
    from synthgen.schemas.recipe import resolve_path

    special = [raw.find(c) for c in "{*?[" if c in raw]
    if is_remote(raw):
        if not special:
            return local_source(raw)
        cut = raw.rfind("/", 0, min(special))
        return f"{local_source(raw[:cut])}/{raw[cut + 1 :]}"
    if special:  # a shard pattern, not a single path
        return raw if Path(raw).is_absolute() else str(base_dir / raw)
    return str(resolve_path(base_dir, raw))


def prune_remote(root_url: str, keep: int, dry_run: bool = False) -> list[str]:
    """`synthgen prune` on an object-store root: all but the `keep` newest builds go.

    Never the build LATEST names, nor one whose lock object is held by a live writer.
    """
    if keep < 1:
        raise BuildError("prune: --keep must be at least 1")
    root = open_store(root_url)
    with RemoteLock(root, "publish root"):  # no build is being published meanwhile
        return _prune_locked(root, keep, dry_run)


def _prune_locked(root: Store, keep: int, dry_run: bool) -> list[str]:
    pointer = read_pointer(root)
    current = pointer["build"].split("/", 1)[1] if pointer else None
    by_folder: dict[str, list[str]] = {}
    for name in root.listing("builds"):
        parts = name.split("/")
        if len(parts) >= 3:
            by_folder.setdefault(parts[1], []).append(name)
    if not by_folder:
        raise BuildError(f"{root}: not a publish root (no builds/)")
    folders = sorted(by_folder)
    removed = []
    for folder in folders[: max(0, len(folders) - keep)]:
        if folder == current:
            continue
        if not dry_run:
            root.delete(sorted(by_folder[folder]))
        removed.append(f"{root.url}/builds/{folder}")
    return removed


def previous_report(root: Store, folder: str) -> Path | None:
    """The report of the build ROOT/LATEST names (when it is not `folder`), downloaded into
    a local folder named like that build, for the report's trend; None if there is none."""
    pointer = read_pointer(root)
    if pointer is None or pointer["build"] == f"builds/{folder}":
        return None
    name = pointer["build"].split("/", 1)[1]
    dest = inside(cache_root() / "previous" / _url_key(root.url), name)
    try:
        root.child(pointer["build"]).fetch("report.json", dest)
    except FileNotFoundError:
        return None
    return dest
