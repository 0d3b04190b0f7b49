"""A worker's conditioning state: its settings, derived pipelines and the inputs it read.

One `WorkerInputs` belongs to one loaded model (`generators.handler.LoadedModel`): the
pipelines each mode derives from that model (diffusers' `from_pipe`, shared weights) and the
source images and masks read back by reference (each checked against its planned sha256)
are kept on it, never in module globals, so two models in one process share nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.generators.modes.base import (
    ConditioningError,
    FileRef,
    MaskRef,
    ModeParams,
    SourceRef,
)
from synthgen.generators.preprocessors import decode_image, fit_image
from synthgen.generators.sources.base import Source, SourceError, SourceOptions, inside_root
from synthgen.schemas.records import GenerationRequest

if TYPE_CHECKING:
    from synthgen.generators.conditioning import ConditioningSettings

MAX_DERIVED = 8  # derived pipelines kept per worker model
MAX_IMAGES = 4096  # source images and masks kept per worker model


def open_described(source: SourceRef) -> Source:
    """The source a worker's settings describe, opened by its recorded format."""
    from synthgen.generators.sources.open import open_source

    return open_source(
        source.location, SourceOptions(source.format, source.label_column, source.image_column)
    )


def read_mask(source: SourceRef, reference: str, opened: Source | None = None) -> bytes:
    """The encoded bytes of one per-sample mask, by its reference: a path in the mask folder,
    or the row / sample of its image (the mask column / member)."""
    if source.mask_folder:
        folder = Path(source.mask_folder)
        path = (folder / reference).resolve()
        if not inside_root(path, folder.resolve()):
            raise SourceError(f"{reference}: leads out of the mask folder {folder}")
        return path.read_bytes()
    if not source.mask_column:
        raise SourceError(f"{source.location}: the source has no masks")
    return (opened or open_described(source)).read(reference, source.mask_column)


def checked_file(entry: FileRef) -> bytes:
    """A fixed input file's bytes, refused when they are not the ones recorded."""
    path = Path(entry.path)
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise ConditioningError(
            f"{path}: changed: its sha256 is {got[:12]}, not {entry.sha256[:12]}"
        )
    return data


class WorkerInputs:
    """The conditioning settings of one loaded model and what it derived and read."""

    def __init__(self, settings: ConditioningSettings | None):
        self.settings = settings
        self._derived: dict[Hashable, tuple[Any, Any]] = {}
        self._images: dict[tuple[str, str], bytes] = {}
        self._sources: dict[SourceRef, Source] = {}
        self._lock = threading.RLock()

    def params_for(self, request: GenerationRequest) -> ModeParams | None:
        """The settings one request is generated under (its own mask included); None for a
        text-only request."""
        if self.settings is None or request.conditioning_mode in (None, "text"):
            return None
        return self.settings.params_for(request)

    def derived(self, pipe: Any, mode: str, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        """The pipeline `make` derives from `pipe` for `mode` (and `key`), made once; the
        base is kept with it so its id cannot be reused while the entry lives."""
        with self._lock:
            slot = (id(pipe), mode, key)
            hit = self._derived.get(slot)
            if hit is not None and hit[0] is pipe:
                return hit[1]
            derived = make()
            if len(self._derived) >= MAX_DERIVED:
                self._derived.pop(next(iter(self._derived)))
            self._derived[slot] = (pipe, derived)
            return derived

    def _source(self, source: SourceRef) -> Source:
        with self._lock:
            if source not in self._sources:
                self._sources[source] = open_described(source)
            return self._sources[source]

    def _cached(self, key: tuple[str, str], read: Callable[[], bytes]) -> bytes:
        with self._lock:
            hit = self._images.get(key)
        if hit is not None:
            return hit
        data = read()
        with self._lock:
            if len(self._images) >= MAX_IMAGES:
                self._images.clear()
            self._images[key] = data
        return data

    def source_bytes(self, source: SourceRef, ref: str, sha: str | None) -> bytes:
        """A source image's bytes by reference, checked against the sha256 planned for it."""

        def read() -> bytes:
            data = self._source(source).read(ref)
            got = hashlib.sha256(data).hexdigest()
            if sha is not None and got != sha:
                raise ConditioningError(
                    f"{source.location}: {ref} changed: its sha256 is {got[:12]}, the "
                    f"sample was made from {sha[:12]}"
                )
            return data

        return self._cached((ref, sha or ""), read)

    def source_image(self, params: ModeParams, request: GenerationRequest) -> Any:
        """A request's source image, decoded and fitted to the sampling size."""
        ref = request.conditioning_source
        if ref is None or params.source is None:
            raise ConditioningError(f"{request.key}: the sample names no source image")
        data = self.source_bytes(params.source, ref, request.conditioning_source_sha256)
        return fit_image(decode_image(data, ref), params.width, params.height, params.resize)

    def mask_bytes(self, source: SourceRef, mask: MaskRef) -> bytes:
        """A per-sample mask's bytes by reference, checked against its recorded sha256."""

        def read() -> bytes:
            opened = None if source.mask_folder else self._source(source)
            data = read_mask(source, mask.reference, opened)
            got = hashlib.sha256(data).hexdigest()
            if got != mask.sha256:
                raise ConditioningError(
                    f"{source.location}: the mask {mask.reference} changed: its sha256 is "
                    f"{got[:12]}, the sample was made with {mask.sha256[:12]}"
                )
            return data

        return self._cached(("mask:" + mask.reference, mask.sha256), read)


def accepting(pipe: Any) -> Callable[..., Any]:
    """`pipe` called with only the keyword arguments its `__call__` names (img2img takes no
    height/width: the size is the image's)."""
    params = inspect.signature(pipe.__call__).parameters
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}

    def call(**kwargs: Any) -> Any:
        return pipe(**{k: v for k, v in kwargs.items() if k in named})

    return call
