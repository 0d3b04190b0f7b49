"""Tiny random-weight snapshots of each diffusers family, laid out as a Hub download leaves them.

Beside the safetensors: `.gitattributes`, a README, and poisoned pickles (`.bin`, `.ckpt`)
whose unpickling would create `marker` — a test asserts the marker never appears.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from synthgen.generators.random_pipelines import save_snapshot


class _Poison:
    """Unpickling this calls `open(marker, "w")`: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def poison(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Poison(marker)))


def make_snapshot(family: str, folder: Path, marker: Path, variant: str | None = None) -> Path:
    """A stock-looking snapshot folder of `family` with poisoned pickles beside the weights."""
    save_snapshot(family, folder, seed=0, variant=variant)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (folder / "README.md").write_text(f"---\nlicense: other\n---\n# tiny {family}\n")
    denoiser = "unet" if (folder / "unet").is_dir() else "transformer"
    poison(folder / denoiser / "diffusion_pytorch_model.bin", marker)
    poison(folder / "text_encoder" / "pytorch_model.bin", marker)
    poison(folder / "model.ckpt", marker)  # a root-level single-file checkpoint
    poison(folder / "text_encoder" / "openvino_model.bin", marker)
    return folder
