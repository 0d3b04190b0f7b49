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


def folder_sha256(
    path: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.json", "*.txt")
) -> str:
    """A content fingerprint of a folder: sha256 over sorted (relative path, file sha256) pairs."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()})
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()
