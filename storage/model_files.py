"""Which files of a model folder may be read: safetensors and JSON/text, never code or pickles."""

from __future__ import annotations

from pathlib import Path

from synthgen.schemas.errors import ModelFolderError

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy")


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
