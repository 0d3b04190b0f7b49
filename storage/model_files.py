"""Which files of a model folder may be read: safetensors and JSON/text, never code or pickles."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from synthgen.schemas.errors import ModelFolderError

MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A model folder's JSON file that must hold an object; ModelFolderError naming the file
    (missing: the folder is not a `what`; unreadable; not an object) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{path.parent}: not a {what}: {path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: unreadable {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def refuse_code_and_pickles(folder: Path) -> None:
    """Raise ModelFolderError for a symlink, a Python file or a pickle-based weight file."""
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            raise ModelFolderError(f"{p}: symbolic links are refused in model folders")
        if not p.is_file():
            continue
        if p.suffix == ".py":
            raise ModelFolderError(
                f"{p}: model folder contains Python code; custom pipeline code is never run"
            )
        if p.suffix in UNSAFE_WEIGHT_SUFFIXES:
            raise ModelFolderError(
                f"{p}: pickle-based weights are refused; convert the model to safetensors"
            )


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from a safetensors header, checked against the file size.

    Refuses a header length past the file or over 100 MB, a malformed header, an unknown
    dtype, and data offsets that disagree with shapes or run past the end of the file.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise ModelFolderError(
                f"{path}: corrupt safetensors header: header length {n} bytes, file {size} bytes"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ModelFolderError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path}: corrupt safetensors header: not a JSON object")
    data_size = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            nbytes = math.prod(int(d) for d in shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise ModelFolderError(f"{path}: corrupt safetensors entry {name!r}") from None
        if (
            min(shape, default=0) < 0
            or not (0 <= begin <= end <= data_size)
            or end - begin != nbytes
        ):
            raise ModelFolderError(
                f"{path}: safetensors entry {name!r} (shape {shape}, {dtype}) does not fit "
                f"its data offsets [{begin}, {end}) in a {data_size}-byte data section"
            )
        out[name] = (dtype, tuple(int(d) for d in shape))
    return out
