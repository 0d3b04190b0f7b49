"""The scorer interface: a plug-in that adds declared score columns to every sample.

A scorer lives in three places. On the driver, `from_recipe` checks its folders and options
and loads nothing; the instance is small and travels to every worker. On a worker, `load`
runs once (models come from `WorkerModels`, so scorers that use the same model share one
copy) and returns the scorer's loaded state. Per batch, `score` receives the decoded images
of one fixed batch and returns one NEW dict of scores per sample, holding exactly the
columns the scorer declares; it never edits a sample and never drops one.

Adding a scorer is one new module in this package with a `Scorer` subclass that sets `name`:
subclassing registers it, and `scorer_classes()` imports every module of the package.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

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

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        if key not in self._models:
            self._models[key] = load()
        model: T = self._models[key]
        return model


class ScoreBatch:
    """One fixed batch as scorers see it: samples, their images decoded once, shared results.

    `shared(key, compute)` runs `compute` once per batch for a key, so scorers that need the
    same intermediate (e.g. CLIP image embeddings) compute it once.
    """

    def __init__(self, samples: Sequence[Sample], images: Sequence[Any]):
        if len(samples) != len(images):
            raise ValueError("one decoded image per sample")
        self.samples = tuple(samples)
        self.images = tuple(images)
        self._shared: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key not in self._shared:
            self._shared[key] = compute()
        value: T = self._shared[key]
        return value


_REGISTRY: dict[str, type[Scorer]] = {}


class Scorer(ABC):
    """One scorer plug-in. Subclasses set `name` (as in the recipe's `scoring.scorers`)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    # pydantic model of the recipe's `options` for this scorer (extra keys forbidden)
    options_model: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return  # an abstract intermediate class
        known = _REGISTRY.get(name)
        if known is not None and _where(known) != _where(cls):
            raise TypeError(f"scorer name {name!r} is taken by {known.__module__}.{known.__name__}")
        _REGISTRY[name] = cls

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

    @abstractmethod
    def score(self, batch: ScoreBatch, state: Any) -> list[dict[str, Score]]:
        """One new dict per sample of `batch`, in order, with exactly this scorer's columns."""


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def scorer_classes() -> dict[str, type[Scorer]]:
    """Every registered scorer by name, after importing each module of this package."""
    package = importlib.import_module("synthgen.validators.scorers")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(sorted(_REGISTRY.items()))
