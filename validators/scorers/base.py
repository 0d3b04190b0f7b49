"""The scorer interface: a plug-in that adds declared score columns to every sample.

A scorer lives in three places. On the driver, `from_recipe` checks its folders and options
and loads nothing; the instance is small and travels to every worker. On a worker, `load`
runs once (models come from `WorkerModels`, so scorers that use the same model share one
copy) and returns the scorer's loaded state. Per batch, `score` receives the decoded images
of one fixed batch and returns one NEW dict of scores per sample, holding exactly the
columns the scorer declares; it never edits a sample and never drops one.

Clips: a build of clips scores `scoring.frames` sampled frames of each clip as images (one
batch of every clip's frames) and `aggregate` makes each clip's columns from its frames' rows;
a `clips_only` scorer (temporal measures) instead sees every frame of one clip at a time
(`score_clip`).

Adding a scorer is one new module in this package with a `Scorer` subclass that sets `name`:
subclassing registers it, and `scorer_classes()` imports every module of the package.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from synthgen.schemas.plugins import Registry
from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample, Score
from synthgen.schemas.scores import ScoreColumn

T = TypeVar("T")


class NoOptions(BaseModel):
    """Options model of a scorer that takes none: any option given is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class ScorerIdentity:
    """What provenance records about a scorer: enough to find the exact model again."""

    name: str
    version: int
    model: str | None
    sha256: str | None
    library: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WorkerModels:
    """The models loaded on one worker, shared by every scorer: each key loads once."""

    def __init__(self, device: str, cpu_threads: int = 1):
        self.device = device
        self.cpu_threads = cpu_threads
        self._models: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # threads of one worker load each model once

    def loaded(self, key: Hashable) -> Any:
        """The model loaded under `key`, or None: for another stage of the same worker that
        can use a scorer's copy instead of loading its own."""
        with self._lock:
            return self._models.get(key)

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
            model: T = self._models[key]
        return model


class ScoreBatch:
    """One fixed batch as scorers see it: samples, their images decoded once, shared results.

    `shared(key, compute)` runs `compute` once per batch for a key, so scorers that need the
    same intermediate (e.g. CLIP image embeddings) compute it once.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        images: Sequence[Any],
        prepared: Sequence[dict[Hashable, Any]] | None = None,
    ):
        if len(samples) != len(images):
            raise ValueError("one decoded image per sample")
        self.samples = tuple(samples)
        self.images = tuple(images)
        self.prepared = tuple(prepared) if prepared is not None else tuple({} for _ in images)
        if len(self.prepared) != len(self.images):
            raise ValueError("one set of prepared inputs per sample")
        self._shared: dict[Hashable, Any] = {}

    def inputs(self, key: Hashable, make: Callable[[Any], T]) -> list[T]:
        """Each image's model input under `key`: the one `Scorer.prepare` made on the host,
        else `make(image)` now (a batch scored without the streaming host work)."""
        return [
            p[key] if key in p else make(im)
            for p, im in zip(self.prepared, self.images, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key not in self._shared:
            self._shared[key] = compute()
        value: T = self._shared[key]
        return value


SCORERS: Registry[Scorer] = Registry("scorer", "synthgen.validators.scorers")
"""Every registered scorer by its name (a registry: `synthgen.schemas.plugins`)."""


class Scorer(ABC):
    """One scorer plug-in. Subclasses set `name` (as in the recipe's `scoring.scorers`)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    # True for a scorer that needs no model (image statistics): it runs with each image's
    # host work, one image at a time, never on the device's critical path. Its scores must
    # not depend on which images share a batch.
    host_only: ClassVar[bool] = False
    # True for a scorer of whole clips (motion, flicker): host-only, it runs on all frames
    # of each clip (`score_clip`), in video builds only.
    clips_only: ClassVar[bool] = False
    # pydantic model of the recipe's `options` for this scorer (extra keys forbidden)
    options_model: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SCORERS.add(cls)

    @classmethod
    @abstractmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> Scorer:
        """Check folders and options (raise ModelFolderError / ValueError); load nothing.

        `options` is an instance of `options_model`; relative paths resolve from `base_dir`.
        """

    @abstractmethod
    def columns(self) -> list[ScoreColumn]:
        """The columns this scorer writes, with their ranges and the named checks they back."""

    @abstractmethod
    def identity(self) -> ScorerIdentity:
        """Name, version, model name, weights sha256 and library, for provenance."""

    def load(self, models: WorkerModels) -> Any:
        """Load what scoring needs, once per worker; the result is passed to `score`."""
        return None

    def prepare(self, image: Any, state: Any, inputs: dict[Hashable, Any]) -> None:
        """Add this image's model inputs to `inputs` (e.g. CLIP's preprocessed pixels), keyed
        so scorers sharing an input make it once: host work, done on other cores while the
        device generates. `score` reads them with `batch.inputs(key, make)`. Default: none."""
        return None

    @abstractmethod
    def score(self, batch: ScoreBatch, state: Any) -> list[dict[str, Score]]:
        """One new dict per sample of `batch`, in order, with exactly this scorer's columns."""

    def aggregate(self, frames: Sequence[dict[str, Score]]) -> dict[str, Score]:
        """One clip's columns from the rows of its sampled frames (in order). Default: the
        mean of each column (element by element for a vector)."""
        return {name: mean_score([row[name] for row in frames]) for name in frames[0]}

    def score_clip(self, sample: Sample, clip: Any, state: Any) -> dict[str, Score]:
        """A `clips_only` scorer's columns for one clip: uint8 (F, H, W, 3), every frame."""
        raise NotImplementedError(f"scorer {self.name!r} does not score whole clips")


def mean_score(values: Sequence[Score]) -> Score:
    """The mean of scalar scores, or of vectors element by element (NaN stays NaN)."""
    first = values[0]
    if isinstance(first, tuple):
        columns = zip(*(v for v in values if isinstance(v, tuple)), strict=True)
        return tuple(sum(c) / len(values) for c in columns)
    return sum(float(v) for v in values if not isinstance(v, tuple)) / len(values)


def max_score(values: Sequence[Score]) -> float:
    """The largest of scalar scores (NaN if any is NaN: an unknown frame is not dropped)."""
    scalars = [float(v) for v in values if not isinstance(v, tuple)]
    return float("nan") if any(math.isnan(v) for v in scalars) else max(scalars)


def min_score(values: Sequence[Score]) -> float:
    """The smallest of scalar scores (NaN if any is NaN)."""
    scalars = [float(v) for v in values if not isinstance(v, tuple)]
    return float("nan") if any(math.isnan(v) for v in scalars) else min(scalars)


def scorer_classes() -> dict[str, type[Scorer]]:
    """Every registered scorer by name, after importing each module of this package."""
    return SCORERS.classes()
