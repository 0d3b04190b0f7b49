"""Content hashes of files and folders: the one sha256 helper every layer uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path, chunk: int = CHUNK) -> str:
    """sha256 of a file's bytes, read in chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FOLDER_CACHE: dict[tuple[object, ...], str] = {}


def folder_sha256(
    path: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.json", "*.txt")
) -> str:
    """A content fingerprint of a folder: sha256 over sorted (relative path, file sha256) pairs.

    Remembered per process while no file's size or modification time changes, so a
    multi-gigabyte model folder is hashed once per build, not once per caller.
    """
    files = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()})
    stats = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = (str(path.resolve()), patterns, tuple(stats))
    if key in _FOLDER_CACHE:
        return _FOLDER_CACHE[key]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        h.update(file_sha256(p).encode())
    _FOLDER_CACHE[key] = h.hexdigest()
    return _FOLDER_CACHE[key]
