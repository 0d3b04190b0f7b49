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
process is gone (same host) or whose heartbeat is older than `LOCK_STALE_S` is taken over by
a PUT conditional on the version that was read, so two processes never both win.
"""

from __future__ import annotations

import contextlib
import fnmatch
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
    shard_stem,
)
from synthgen.schemas.names import name_problem
from synthgen.schemas.recipe import is_url, resolve_path
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.storage.cache import cache_root
from synthgen.storage.hashing import file_sha256
from synthgen.storage.store import (
    ConditionalWriteUnsupported,
    Store,
    StoreError,
    inside,
    is_remote,
    open_store,
)

logger = logging.getLogger(__name__)

POINTER = "LATEST"
LOCK_OBJECT = f"{STATE_DIR}/lock.json"
LOCK_STALE_S = 600.0
HEARTBEAT_S = 60.0
STATE_OBJECT = f"{STATE_DIR}/{STATE_NAME}"
# In a working copy: the store location it mirrors, for messages that name the build.
LOCATION_NAME = f"{STATE_DIR}/location"
# Never mirrored: the local lock, progress counters, staging (re-made on resume), temp files,
# the working copy's own location record.
LOCAL_ONLY = (
    f"{STATE_DIR}/lock",
    f"{STATE_DIR}/progress/",
    f"{STATE_DIR}/staging/",
    LOCATION_NAME,
)


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


def work_dir(url: str) -> Path:
    """The local working folder of the build at `url`."""
    return cache_root() / "work" / _url_key(url)


class RemoteLock:
    """One writer per store prefix: a lock object changed only conditionally on its version.

    It is taken by creating the object (If-None-Match). A stale one (its process gone, or no
    heartbeat for LOCK_STALE_S) is taken over by replacing exactly the version that was read
    and judged stale (If-Match), never by deleting it first: of two processes taking over
    from the same version, the store lets at most one win. Each heartbeat replaces this
    process's own last version; finding another one means the lock was taken over (`lost`).
    Released by deleting its own version only.

    A store without conditional replace (`gs://` here) still locks with the conditional
    create, but never takes a stale lock over by itself: the message names the object to
    delete by hand once its process is known to be gone.
    """

    def __init__(self, store: Store, what: str):
        self.store = store
        self.what = what
        self.owner = uuid.uuid4().hex
        self.version: str | None = None  # the lock object's version this process wrote last
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

    @staticmethod
    def _stale(data: bytes) -> bool:
        try:
            held = json.loads(data)
            heartbeat = float(held.get("heartbeat", 0))
        except (ValueError, TypeError, AttributeError):
            return False  # not ours to judge: refused, never taken over
        if held.get("host") == socket.gethostname():
            try:
                os.kill(int(held.get("pid", 0)), 0)
            except ProcessLookupError:
                return True  # its process is gone (killed): the lock is left over
            except (PermissionError, ValueError, TypeError, OverflowError):
                pass
        return time.time() - heartbeat > LOCK_STALE_S

    def _held_by_another(self) -> BuildError:
        return BuildError(
            f"{self.store}: another synthgen process is using this {self.what}; "
            "wait for it to finish (only one build may write here at a time)"
        )

    def __enter__(self) -> RemoteLock:
        """1. the lock object created with a conditional PUT (If-None-Match)
        2. if it exists: read with its version; a live holder's lock is refused
        3. a stale one replaced only at the version read (If-Match): of two processes
           taking it over, one wins and the other is refused
        4. the store must refuse a second create (and a second replace of that version),
           or it cannot lock at all"""
        version = self.store.create_bytes(LOCK_OBJECT, self._body())
        if version is None:
            version = self._take_over()
        elif self.store.create_bytes(LOCK_OBJECT, self._body()) is not None:
            raise self._not_honoured("If-None-Match")
        self.version = version
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _take_over(self) -> str:
        try:
            data, seen = self.store.read_versioned(LOCK_OBJECT)
        except FileNotFoundError:  # released meanwhile: one more conditional create
            version = self.store.create_bytes(LOCK_OBJECT, self._body())
            if version is None:
                raise self._held_by_another() from None
            return version
        except ConditionalWriteUnsupported:
            if not self._stale(self.store.read_bytes(LOCK_OBJECT)):
                raise self._held_by_another() from None
            raise BuildError(
                f"{self.store}/{LOCK_OBJECT}: a lock left by a process that is gone, but this "
                "store cannot replace an object conditionally, so synthgen will not take it "
                "over by itself (two processes could both win); delete that object once you "
                "are sure no build is writing here"
            ) from None
        if not self._stale(data):
            raise self._held_by_another()
        logger.info("%s: taking over a lock left by a process that is gone", self.store)
        version = self.store.replace_bytes(LOCK_OBJECT, self._body(), seen)
        if version is None:
            raise self._held_by_another()  # another process took it over first
        if self.store.replace_bytes(LOCK_OBJECT, self._body(), seen) is not None:
            raise self._not_honoured("If-Match")
        return version

    def _not_honoured(self, header: str) -> BuildError:
        return BuildError(
            f"{self.store}: this store does not honour conditional writes ({header}), so "
            "synthgen cannot keep a second writer out; use a store that does (AWS S3, GCS, "
            "recent MinIO)"
        )

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
        """One heartbeat: replace this process's own version of the lock; if the store holds
        another version (taken over), mark the lock lost."""
        if self.version:
            with contextlib.suppress(ConditionalWriteUnsupported):
                version = self.store.replace_bytes(LOCK_OBJECT, self._body(), self.version)
                if version is None:
                    self.lost = True
                    return False
                self.version = version
                return True
        # No versions on this store: nobody takes a lock over here but a person.
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
        if self._thread is not None:
            self._thread.join(timeout=30)  # no heartbeat in flight while it is released
        with contextlib.suppress(StoreError, OSError, ValueError):
            if self.version:
                # a store that refuses the conditional delete (StoreError) is released as
                # one without versions: by owner, below
                with contextlib.suppress(StoreError):
                    self.store.delete_version(LOCK_OBJECT, self.version)
                    return
            if self._owner() == self.owner:
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
            self._record_location()
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
        # a shard's data files (its ShardFiles and any its writer adds): `{shard:05d}.<ext>`
        stems = {shard_stem(int(n.split("_")[0])) for n in stats_names}
        shard_data = {n for n in listing if "/" not in n and n.partition(".")[0] in stems}
        for name in stats_names:
            self._pull_shard(name, listing)
        for name, size in listing.items():
            if name in shard_data or name in stats_names or name.startswith(LOCAL_ONLY):
                continue
            self._download(name, size)
        self._record_location()

    def _record_location(self) -> None:
        """The store URL this working copy mirrors, kept beside it (never uploaded): what the
        command line names when a signal interrupts the build."""
        (self.local / STATE_DIR).mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.local / LOCATION_NAME, self.store.url.encode())

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
Pointer = dict[str, str]
# LATEST as read under the root's lock: what it named, and the object's version (None where
# it did not exist, or where the store keeps no versions).
PointerSeen = tuple[Pointer | None, str | None]


def read_pointer(root: Store) -> Pointer | None:
    try:
        raw = root.read_bytes(POINTER)
    except FileNotFoundError:
        return None
    return _parse_pointer(root, raw)


def read_pointer_seen(root: Store) -> PointerSeen:
    """LATEST and its version, read together: what a publish must find unchanged."""
    try:
        raw, version = root.read_versioned(POINTER)
    except FileNotFoundError:
        return None, None
    except ConditionalWriteUnsupported:
        return read_pointer(root), None
    return _parse_pointer(root, raw), version


def _parse_pointer(root: Store, raw: bytes) -> Pointer:
    try:
        data = json.loads(raw)
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


def check_root(root: Store) -> None:
    """Refuse a publish root that is itself a build: its own manifest would hide LATEST from
    every reader (`resolve_build`), so a publish there could never be seen."""
    for name in (MANIFEST_NAME, STATE_OBJECT):
        if root.exists(name):
            raise BuildError(
                f"{root}: is a build ({name} at its top), not a publish root; --publish "
                f"writes ROOT/builds/<version>/ and ROOT/{POINTER}: choose another root"
            )


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


def publish_pointer(root: Store, folder: str, manifest: Manifest, seen: PointerSeen) -> None:
    """Swap ROOT/LATEST to a complete build: one conditional PUT of a small JSON object.

    Made only while LATEST is still what it was when this build locked the root (`seen`:
    replaced at that version, or created if there was none), so a pointer can never move
    back to a build older than one published meanwhile; BuildError otherwise. On a store
    without versions, LATEST is compared by reading it (the root's lock keeps synthgen
    writers out).
    """
    body = {
        "build": f"builds/{folder}",
        "recipe_hash": manifest.recipe_hash,
        "manifest_sha256": hashlib.sha256(
            root.read_bytes(f"builds/{folder}/{MANIFEST_NAME}")
        ).hexdigest(),
        "published_at": utc_now(),
    }
    data = (json.dumps(body, indent=2) + "\n").encode()
    pointer, version = seen
    if version is not None:
        swapped = root.replace_bytes(POINTER, data, version) is not None
    elif pointer is None:
        swapped = root.create_bytes(POINTER, data) is not None
    else:
        swapped = read_pointer(root) == pointer
        if swapped:
            root.write_bytes(POINTER, data)
    if not swapped:
        now = read_pointer(root)
        raise BuildError(
            f"{root}/{POINTER}: moved while this build ran (it named "
            f"{pointer['build'] if pointer else 'nothing'}, now "
            f"{now['build'] if now else 'nothing'}): not published, so it cannot move back; "
            f"the build is complete at {root.url}/builds/{folder}"
        )


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

    `location` is a local path (returned as it is), or an object-store URL naming one object,
    a prefix, or a shard pattern in its last part(s) (`s3://b/shards/shard-{0..9}.tar`,
    `.../*.tar`): a pattern is expanded against the prefix's listing and only the objects it
    matches are downloaded; the local pattern returned matches exactly those.

    A cached copy is used only while the object's version tag (size + ETag / generation)
    is the one it was downloaded at; objects gone from the store go from the cache too.
    """
    if not is_remote(location):
        return location
    store = open_store(location)  # credentials or a query: refused here, never echoed
    cut = _pattern_start(store.url)
    if cut is not None:
        folder, pattern = store.url[:cut], store.url[cut + 1 :]
        prefix = open_store(folder)
        wanted = _expand(pattern)
        versions = {n: v for n, v in prefix.versions().items() if _matches(n, wanted)}
        if not versions:
            raise BuildError(f"{location}: no object matches the pattern")
        return f"{_cached(prefix, versions, store.url)}/{pattern}"
    if store.exists(""):
        name = store.url.rsplit("/", 1)[1]
        parent = open_store(store.url.rsplit("/", 1)[0])
        versions = {n: v for n, v in parent.versions(name).items() if n == name}
        return str(_cached(parent, versions, store.url) / name)
    versions = store.versions()
    if not versions:
        raise BuildError(f"{location}: no such object or prefix")
    return str(_cached(store, versions, store.url))


def _pattern_start(url: str) -> int | None:
    """The index of the '/' before the first part of `url`'s path that holds a pattern
    character (`{`, `*`, `[`; in a URL `?` starts a query), or None for an object or prefix."""
    path_start = url.find("/", url.index("://") + 3)
    if path_start < 0:
        return None
    special = [i for c in "{*[" if (i := url.find(c, path_start)) >= 0]
    return url.rfind("/", 0, min(special)) if special else None


def _expand(pattern: str) -> list[list[str]]:
    """A shard pattern's alternatives (braces expanded), each as its '/'-separated parts."""
    import braceexpand

    return [alt.split("/") for alt in braceexpand.braceexpand(pattern)]


def _matches(name: str, wanted: list[list[str]]) -> bool:
    """Whether a listed name matches one alternative part by part, as a local glob would
    (`*` never crosses a '/', and does not match a leading dot)."""
    parts = name.split("/")
    return any(
        len(parts) == len(alt)
        and all(
            fnmatch.fnmatchcase(part, want) and not (part.startswith(".") and want[:1] != ".")
            for part, want in zip(parts, alt, strict=True)
        )
        for alt in wanted
    )


def _cached(store: Store, versions: dict[str, str], key: str) -> Path:
    """The objects `versions` names, under the cache folder of the location `key`."""
    dest = cache_root() / "sources" / _url_key(key)
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
    return dest


def source_location(base_dir: Path, raw: str) -> str:
    """Where the readers find a source named in a recipe: a path relative to the recipe, a
    shard pattern, or a URL. An object-store URL is downloaded into the cache (a pattern's
    matches only, the pattern kept); `file://` is its local path; any other URL is refused,
    named without its credentials or query (`storage.store.open_store`)."""
    if is_url(raw):
        if is_remote(raw):
            return local_source(raw)
        store = open_store(raw)  # file://, or refused: an unsupported scheme
        raw = str(store)
    if any(c in raw for c in "{*?["):  # a shard pattern, not a single path
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
