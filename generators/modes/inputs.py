"""What a mode's `resolve` checks its inputs with, on the driver: nothing here loads a model.

`ResolveContext` carries the recipe, the folders paths resolve against, the base pipeline
class and the sha256 of every model folder already checked (a folder used by several
classes is checked and hashed once). `prepare` turns an input image into what the model
gets, so every image a worker will use is known to decode, fit and preprocess.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen.generators.modes.base import ConditioningError, FileRef, ModeParams, SourceRef
from synthgen.generators.preprocessors import (
    PreprocessorError,
    decode_image,
    fit_image,
    preprocess,
)
from synthgen.generators.sources.base import PixelLimit, SourceError, image_size
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import ConditioningSpec, Recipe, resolve_path
from synthgen.storage.model_files import read_json_object


@dataclass(frozen=True)
class PoolImage:
    """One source image of a class: reference, sha256, bytes, and its mask's (reference,
    sha256, bytes) or None."""

    ref: str
    sha256: str
    data: bytes
    mask: tuple[str, str, bytes] | None = None


@dataclass
class ResolveContext:
    """The driver's view while modes resolve: recipe, folders, base pipeline class."""

    recipe: Recipe
    base_dir: Path
    model_path: Path
    pipeline_class: str
    folder_sha: dict[str, str] = field(default_factory=dict)

    def common(self, spec: ConditioningSpec, source: SourceRef | None) -> dict[str, Any]:
        """The fields every mode's params share: mode, fitting and sampling size, source."""
        s = self.recipe.sampling
        return {
            "mode": spec.mode,
            "resize": spec.resize,
            "width": s.width,
            "height": s.height,
            "source": source,
        }

    def fixed_image(self, raw: str, where: str) -> tuple[FileRef, bytes]:
        """A recipe's fixed image (mask, ControlNet image, image prompt), read and hashed."""
        path = resolve_path(self.base_dir, raw)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConditioningError(
                f"{where}: {path}: cannot read: {exc.strerror or exc}"
            ) from None
        return FileRef(str(path), hashlib.sha256(data).hexdigest()), data

    def checked_folder(
        self, raw: str, check: Callable[[Path, Path, str], Any], where: str
    ) -> tuple[str, str]:
        """A model folder the recipe names (ControlNet, IP-Adapter): checked against the base
        model by `check(path, model_path, where)` and hashed, once per folder."""
        from synthgen.storage.hashing import folder_sha256

        path = resolve_path(self.base_dir, raw)
        if str(path) not in self.folder_sha:
            check(path, self.model_path, where)
            self.folder_sha[str(path)] = folder_sha256(path)
        return str(path), self.folder_sha[str(path)]


def prepare(data: bytes, where: str, params: ModeParams, pre: dict[str, Any]) -> Any:
    """An input image as the model gets it (decoded, fitted, preprocessed); one declaring
    more pixels than `PixelLimit` allows for the sampling size is refused undecoded."""
    try:
        PixelLimit(params.width, params.height).check(image_size(data, where), where)
        image = decode_image(data, where)
        fitted = fit_image(image, params.width, params.height, params.resize)
        return preprocess(fitted, pre, where)
    except (SourceError, PreprocessorError) as exc:
        raise ConditioningError(f"conditioning: {exc}") from None


def fit_mask(mask: Any, params: ModeParams) -> Any:
    """A per-sample mask fitted like its image (same policy, nearest-neighbour: it stays a
    mask)."""
    return fit_image(mask, params.width, params.height, params.resize, "nearest")


def read_config(path: Path, where: str) -> dict[str, Any]:
    """`read_json_object`, its error named after the recipe field that led to the file."""
    try:
        return read_json_object(path, "model folder")
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None


def scan_folder(path: Path, where: str) -> None:
    """A model folder holds only files that load without code (safetensors, configs)."""
    from synthgen.generators.model_folder import scan_files

    try:
        scan_files(path)
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None
