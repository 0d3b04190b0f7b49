"""Where build files live: a local folder or an object store, behind one small interface.

    store = open_store("s3://bucket/corpora/digits")   # or gs://, file://, a plain path
    store.write_bytes("LATEST", data)                 # one whole object (one PUT)
    store.put_file(local_path, "00000.tar")           # a whole object from a local file
    store.listing()                                   # names and sizes, recursively

Object stores are reached through fsspec (`s3fs` for `s3://`, `gcsfs` for `gs://`) with
credentials from each provider's standard chain (environment, config files, instance
metadata). A URL that carries credentials itself (`s3://key:secret@bucket`) is refused, so a
secret can never reach a manifest, a log line or an error message through the URL.

Every write is whole: on a local folder a temporary file renamed into place, on an object
store a single PUT (a multipart upload, for large files, becomes visible only when complete).

Small objects that several processes contend for (a lock, a pointer) are changed only by
conditional operations on the object's own version: `create_bytes` (only if absent),
`replace_bytes` and `delete_version` (only while it is at the version the caller read). The
store decides, so of two processes racing from the same version at most one succeeds. On S3
the version is the ETag (If-None-Match / If-Match on PUT and DELETE); on a local folder the
sha256 of the content, compared and changed under a lock on the folder. Other object stores
(`gs://` through gcsfs) raise ConditionalWriteUnsupported for the last three.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from synthgen.schemas.names import name_problem
from synthgen.schemas.recipe import shown_url
from synthgen.storage.atomic import atomic_write, write_bytes_atomic

REMOTE_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


class StoreError(RuntimeError):
    """A storage location is malformed, unreachable or not allowed; the message says which."""


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is an object-store URL (`s3://`, `gs://`), not a local path."""
    return urlsplit(str(location)).scheme in REMOTE_SCHEMES


def local_path(location: str | os.PathLike[str]) -> Path:
    """A local path from a plain path or a `file://` URL."""
    text = str(location)
    if text.startswith("file://"):
        return Path(urlsplit(text).path)
    return Path(text)


def check_url(url: str) -> str:
    """`url` normalised (no trailing slash); refused when it names credentials or no bucket."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise StoreError(
            f"{parts.scheme}://…: credentials inside a storage URL are refused; use the "
            "provider's standard credential chain (environment variables, config files, "
            "instance metadata)"
        )
    bare = f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query: it may sign
    if not parts.netloc:
        raise StoreError(f"{bare}: no bucket named")
    if parts.query or parts.fragment:
        raise StoreError(
            f"{bare}: query strings and fragments are not supported in a location (not shown)"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class ConditionalWriteUnsupported(StoreError):
    """This store cannot read, replace or delete an object conditionally on its version."""


class UnsafeNameError(StoreError):
    """A name from a store, a tar, a manifest or a pointer would leave its folder."""


def checked_name(name: str, where: str) -> str:
    """`name` when it is a safe relative name (`schemas.names`); UnsafeNameError otherwise.

    `where` says where the name came from (a store URL, a tar, a manifest) for the message.
    """
    problem = name_problem(name)
    if problem is not None:
        raise UnsafeNameError(
            f"{where}: refused the name {name!r}: {problem}; a name must stay inside its folder"
        )
    return name


def inside(root: Path, name: str, where: str | None = None) -> Path:
    """`root / name`, refused unless it stays inside `root` (symlinks resolved).

    The one place a name that came from outside (a listing, a tar member, a manifest, a
    pointer) becomes a local path: every download and every local read of such a name goes
    through it.
    """
    checked_name(name, where or str(root))
    path = root / name
    base = root.resolve()
    target = path.resolve()
    if target != base and base not in target.parents:
        raise UnsafeNameError(
            f"{where or root}: refused the name {name!r}: it resolves outside {root} "
            "(through a symbolic link)"
        )
    return path


class Store:
    """A folder of named files; names are relative, '/'-separated.

    Every name a store is given or lists is checked (`checked_name`): a listing that holds a
    name such as `a/../../x` or `a//x` raises UnsafeNameError rather than handing it on.
    """

    url: str

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def create_bytes(self, name: str, data: bytes) -> str | None:
        """Write `name` only if it does not exist yet: the new object's version ('' where the
        store does not say), or None if it existed (one conditional PUT, If-None-Match)."""
        raise NotImplementedError

    def read_versioned(self, name: str) -> tuple[bytes, str]:
        """`name`'s bytes and the version they are, read together; FileNotFoundError if absent.

        The version is what `replace_bytes` and `delete_version` compare with.
        """
        raise NotImplementedError

    def replace_bytes(self, name: str, data: bytes, version: str) -> str | None:
        """Replace `name` only while it is still at `version`: the new version, or None if it
        changed or is gone meanwhile (the store decides: one conditional PUT, If-Match)."""
        raise NotImplementedError

    def delete_version(self, name: str, version: str) -> bool:
        """Delete `name` only while it is still at `version`; False if it changed or is gone."""
        raise NotImplementedError

    def put_file(self, local: Path, name: str) -> None:
        raise NotImplementedError

    def get_file(self, name: str, local: Path) -> None:
        raise NotImplementedError

    def fetch(self, name: str, root: Path) -> Path:
        """Download `name` to the same name under the local folder `root`; its path.

        The name is checked to stay inside `root` first (`inside`), so a hostile key cannot
        write anywhere else.
        """
        dest = inside(root, name, f"{self}/{name}")
        self.get_file(name, dest)
        return dest

    def listing(self, prefix: str = "") -> dict[str, int]:
        """Every file under `prefix` (recursively) with its size in bytes."""
        raise NotImplementedError

    def versions(self, prefix: str = "") -> dict[str, str]:
        """Every file under `prefix` with a tag that changes when its content does."""
        return {name: str(size) for name, size in self.listing(prefix).items()}

    def delete(self, names: list[str]) -> None:
        raise NotImplementedError

    def child(self, name: str) -> Store:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.url


class LocalStore(Store):
    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def _p(self, name: str) -> Path:
        return inside(self.root, name, self.url) if name else self.root

    def exists(self, name: str) -> bool:
        return self._p(name).is_file()

    def read_bytes(self, name: str) -> bytes:
        return self._p(name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        self._p(name).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self._p(name), data)

    def create_bytes(self, name: str, data: bytes) -> str | None:
        path = self._p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked to `name`: the link fails if the
        # name exists, and a reader never sees a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return None
        finally:
            os.unlink(tmp)
        return _sha256(data)

    @contextlib.contextmanager
    def _folder_locked(self, path: Path) -> Iterator[None]:
        """Compare-and-change of a file in `path`'s folder, one process at a time (flock on
        the folder itself: no extra file in the store, released by the kernel on death)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_versioned(self, name: str) -> tuple[bytes, str]:
        data = self._p(name).read_bytes()  # files are replaced by rename: one whole version
        return data, _sha256(data)

    def replace_bytes(self, name: str, data: bytes, version: str) -> str | None:
        path = self._p(name)
        done = self._at_version(path, version, lambda: write_bytes_atomic(path, data))
        return _sha256(data) if done else None

    def delete_version(self, name: str, version: str) -> bool:
        path = self._p(name)
        return self._at_version(path, version, path.unlink)

    def _at_version(self, path: Path, version: str, act: Callable[[], object]) -> bool:
        """Run `act` only while `path` still holds `version` (compared and done under the
        folder's lock); False when it is gone or changed meanwhile."""
        with self._folder_locked(path):
            try:
                current = _sha256(path.read_bytes())
            except FileNotFoundError:
                return False
            if current != version:
                return False
            act()
        return True

    def put_file(self, local: Path, name: str) -> None:
        dest = self._p(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with local.open("rb") as f, atomic_write(dest) as g:
            shutil.copyfileobj(f, g)

    def get_file(self, name: str, local: Path) -> None:
        LocalStore(local.parent).put_file(self._p(name), local.name)

    def listing(self, prefix: str = "") -> dict[str, int]:
        base = self._p(prefix) if prefix else self.root
        if not base.is_dir():
            return {}
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }

    def delete(self, names: list[str]) -> None:
        for name in names:
            self._p(name).unlink(missing_ok=True)

    def child(self, name: str) -> Store:
        return LocalStore(self._p(name))


class FsspecStore(Store):
    """An object-store prefix through fsspec; the filesystem object is made on first use."""

    def __init__(self, url: str):
        self.url = check_url(url)
        self.protocol = urlsplit(self.url).scheme
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "protocol": self.protocol, "_fs": None}

    @property
    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            try:
                self._fs = fsspec.filesystem(self.protocol, use_listings_cache=False)
            except ImportError:
                package = REMOTE_SCHEMES[self.protocol]
                raise StoreError(
                    f"{self.protocol}:// locations need the `{package}` package: "
                    f"pip install {package}"
                ) from None
        return self._fs

    def _p(self, name: str) -> str:
        return f"{self.url}/{checked_name(name, self.url)}" if name else self.url

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            # botocore messages can quote request details but never credentials; keep the
            # type and a short text, never a traceback's local variables.
            raise StoreError(f"{self.url}: {what} failed: {type(exc).__name__}: {exc}") from None

    def exists(self, name: str) -> bool:
        return bool(self._call("exists", self.fs.isfile, self._p(name)))

    def read_bytes(self, name: str) -> bytes:
        return bytes(self._call("read", self.fs.cat_file, self._p(name)))

    def write_bytes(self, name: str, data: bytes) -> None:
        self._call("write", self.fs.pipe_file, self._p(name), data)

    def create_bytes(self, name: str, data: bytes) -> str | None:
        try:
            out = self.fs.pipe_file(self._p(name), data, mode="create")
        except FileExistsError:
            return None
        except (OSError, ValueError) as exc:
            if _condition_failed(exc):
                return None
            raise StoreError(f"{self.url}: write failed: {type(exc).__name__}: {exc}") from None
        return _etag(out)

    def _s3_key(self, name: str, what: str) -> tuple[str, str]:
        if self.protocol != "s3":
            raise ConditionalWriteUnsupported(
                f"{self.url}: {what} conditional on an object's version is not supported on "
                f"{self.protocol}:// by synthgen (only s3:// and local folders)"
            )
        bucket, key, _ = self.fs.split_path(self._p(name))
        return bucket, key

    def read_versioned(self, name: str) -> tuple[bytes, str]:
        bucket, key = self._s3_key(name, "a read")
        fs = self.fs

        async def get() -> tuple[bytes, str]:
            # One GET: the body and the ETag of that same body (a HEAD then a GET could
            # pair one version's tag with another's bytes).
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
            return bytes(data), str(resp["ETag"])

        from fsspec.asyn import sync

        result: tuple[bytes, str] = self._call("read", sync, fs.loop, get)
        return result

    def replace_bytes(self, name: str, data: bytes, version: str) -> str | None:
        self._s3_key(name, "a replace")
        try:
            out = self.fs.pipe_file(self._p(name), data, IfMatch=version)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if _condition_failed(exc):
                return None
            raise StoreError(f"{self.url}: write failed: {type(exc).__name__}: {exc}") from None
        return _etag(out)

    def delete_version(self, name: str, version: str) -> bool:
        bucket, key = self._s3_key(name, "a delete")
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            if _condition_failed(exc):
                return False
            raise StoreError(f"{self.url}: delete failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.fs.invalidate_cache(self._p(name))
        return True

    def put_file(self, local: Path, name: str) -> None:
        self._call("upload", self.fs.put_file, str(local), self._p(name))

    def get_file(self, name: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(local) as f:
            f.write(self.read_bytes(name))

    def _find(self, prefix: str) -> dict[str, dict[str, Any]]:
        base = self._p(prefix.rstrip("/"))
        with contextlib.suppress(FileNotFoundError):
            found = self._call("list", self.fs.find, base, detail=True)
            root = self.url.split("://", 1)[1]
            return {
                checked_name(path[len(root) + 1 :], self.url): info
                for path, info in sorted(found.items())
                if info.get("type") == "file" and path.startswith(root + "/")
            }
        return {}

    def listing(self, prefix: str = "") -> dict[str, int]:
        return {name: int(info.get("size") or 0) for name, info in self._find(prefix).items()}

    def versions(self, prefix: str = "") -> dict[str, str]:
        tags = ("ETag", "etag", "md5Hash", "generation", "LastModified", "mtime", "updated")
        out = {}
        for name, info in self._find(prefix).items():
            tag = next((str(info[t]) for t in tags if info.get(t) is not None), "")
            out[name] = f"{info.get('size')}:{tag}"
        return out

    def delete(self, names: list[str]) -> None:
        paths = [self._p(n) for n in names]
        if paths:
            with contextlib.suppress(FileNotFoundError):
                self._call("delete", self.fs.rm, paths)

    def child(self, name: str) -> Store:
        return FsspecStore(self._p(name))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _etag(response: Any) -> str:
    """The ETag of a PUT's response ('' where the filesystem does not return one)."""
    return str(response.get("ETag") or "") if isinstance(response, dict) else ""


def _condition_failed(exc: BaseException) -> bool:
    """Whether a store refused a conditional operation because its condition did not hold:
    412 Precondition Failed, or AWS's 409 for two conditional writes at once."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return True
        seen = seen.__cause__
    return False


def open_store(location: str | os.PathLike[str]) -> Store:
    """The store for a local path, a `file://` URL, or an `s3://` / `gs://` URL."""
    text = str(location)
    if is_remote(text):
        return FsspecStore(text)
    scheme = urlsplit(text).scheme
    if scheme not in ("", "file") and len(scheme) > 1:  # one letter: a Windows drive
        raise StoreError(
            f"{shown_url(text)}: unsupported storage scheme {scheme}://; use a local path, "
            "file://, s3:// or gs://"
        )
    return LocalStore(local_path(text).resolve())
