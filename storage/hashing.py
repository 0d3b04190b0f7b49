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


DEFAULT_PATTERNS = ("*.safetensors", "*.json", "*.txt")


class FolderHashes:
    """Folder fingerprints already computed, keyed by the folder and every file's size and
    modification time: a multi-gigabyte model folder is hashed once, not once per caller.

    A registry: the process holds one, FOLDER_HASHES, shared by every layer that
    fingerprints a folder (resolving, provenance, regeneration)."""

    def __init__(self) -> None:
        self._known: dict[tuple[object, ...], str] = {}

    def __len__(self) -> int:
        return len(self._known)

    def sha256(self, path: Path, patterns: tuple[str, ...] = DEFAULT_PATTERNS) -> str:
        """sha256 over sorted (relative path, file sha256) pairs of the files matching
        `patterns`; remembered while no file's size or modification time changes."""
        files = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()})
        stats = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        key = (str(path.resolve()), patterns, tuple(stats))
        known = self._known.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(path)).encode())
            h.update(file_sha256(p).encode())
        self._known[key] = h.hexdigest()
        return self._known[key]

    def clear(self) -> None:
        self._known.clear()


FOLDER_HASHES = FolderHashes()


def folder_sha256(path: Path, patterns: tuple[str, ...] = DEFAULT_PATTERNS) -> str:
    """A content fingerprint of a folder (`FolderHashes.sha256`), remembered per process in
    the FOLDER_HASHES registry."""
    return FOLDER_HASHES.sha256(path, patterns)
