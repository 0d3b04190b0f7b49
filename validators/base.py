"""The check interfaces: per-sample checks answer keep (None) or drop with a reason;
build-wide checks tag the keys they drop, from features of every sample of the build.

Both are plug-ins shaped like scorers (`validators.scorers.base`). On the driver,
`from_recipe(recipe, columns)` reads the check's options from the recipe's `checks` block
and the declared score columns, raises a RecipeError naming `checks.<name>` for a bad one,
loads nothing, and returns the configured instance(s), or None when the recipe leaves the
check off. The instances are small and travel to the workers, where `load()` runs once per
worker before the first use. A built-in check reads its fields of `ChecksSpec`; a plug-in
check's options are `recipe.checks.plugin_options()[name]`, validated by its
`options_model` (`recipe_options`).

Adding a check is one new module in `validators/checks/` with a `Check` or `BuildCheck`
subclass that sets `name`: subclassing registers it, and `check_classes()` /
`build_check_classes()` import every module of that package. Checks run in `order`, then
by name (see `validators.build_checks.make_checks`); the first failing check is a sample's
reject reason.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from synthgen.schemas.plugins import Registry
from synthgen.schemas.recipe import Recipe, RecipeError
from synthgen.schemas.records import Sample, SampleFeatures
from synthgen.schemas.scores import ScoreColumn
from synthgen.validators.frames import decode_media, is_video

PASS = "pass"
PLUGIN_ORDER = 100  # plug-ins run after every built-in check

T = TypeVar("T", bound="CheckPlugin")


class NoOptions(BaseModel):
    """Options model of a check that takes none: any option given is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CheckPlugin:
    """What both kinds of check share: the registry name, options and driver-side setup
    (not subclassed directly: subclass `Check` or `BuildCheck`)."""

    # The registry name; a plug-in's is also its key in the recipe's `checks` block.
    # Instances may carry a more specific name (the outcome they record).
    name: str
    # Where the check runs among the others (then by name): built-ins below PLUGIN_ORDER.
    order: ClassVar[int] = PLUGIN_ORDER
    # True for a check whose options are fields of ChecksSpec (not a plug-in key).
    builtin: ClassVar[bool] = False
    # pydantic model of the check's options (extra keys forbidden)
    options_model: ClassVar[type[BaseModel]] = NoOptions

    @classmethod
    def recipe_options(cls, recipe: Recipe) -> Any:
        """The options the recipe gives this plug-in (an `options_model`), or None when the
        recipe does not name it. A bad option is a RecipeError naming `checks.<name>`."""
        given = recipe.checks.plugin_options()
        if cls.name not in given:
            return None
        try:
            return cls.options_model.model_validate(given[cls.name] or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}"
                for e in exc.errors()
            )
            raise RecipeError(f"checks.{cls.name}: {problems}") from None

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, columns: Sequence[ScoreColumn]
    ) -> CheckPlugin | Sequence[CheckPlugin] | None:
        """The configured check(s), or None when the recipe leaves it off. Checks options
        and columns (RecipeError naming the field); loads nothing. Default: `cls(options)`
        when the recipe names the plug-in."""
        options = cls.recipe_options(recipe)
        return None if options is None else cls(options)  # type: ignore[call-arg]

    def load(self) -> None:
        """Load what the check needs, once per worker, before its first use. Default: none."""
        return None


def _running_order(item: tuple[str, type[CheckPlugin]]) -> tuple[int, str]:
    return (item[1].order, item[0])


CHECKS: Registry[Check] = Registry("check", "synthgen.validators.checks", order=_running_order)
"""Every registered per-sample check by name, in running order (a registry:
`synthgen.schemas.plugins`)."""
BUILD_CHECKS: Registry[BuildCheck] = Registry(
    "build-wide check", "synthgen.validators.checks", order=_running_order
)
"""Every registered build-wide check by name, in running order."""


class Check(CheckPlugin, ABC):
    """One per-sample check. An instance's `name` is the key of its outcome in the sample's
    `checks` provenance."""

    # True for a check whose outcome is decided by the build-wide check of the same name
    # (a per-class quantile cut): the deciding step answers for it.
    decided_build_wide: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CHECKS.add(cls)

    @abstractmethod
    def reason(self, sample: Sample) -> str | None:
        """None to keep the sample, else a short reject reason (e.g. `clip_score_below_0.2`)."""


class Verdict(Check):
    """A check whose outcome is already known (a build-wide check's, for one sample)."""

    def __init__(self, name: str, outcome: str | None):
        self.name = name
        self.outcome = outcome

    def reason(self, sample: Sample) -> str | None:
        return self.outcome


@dataclasses.dataclass(frozen=True, slots=True)
class BuildFeatures(SampleFeatures):
    """A sample's features as a build-wide check sees them: key, class, image sha256,
    perceptual hash, the scalar scores and the vector columns (embeddings) it needs."""

    vectors: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(
        cls, features: SampleFeatures, vectors: dict[str, tuple[float, ...]] | None = None
    ) -> BuildFeatures:
        """`features` (a SampleFeatures) with `vectors`."""
        shared = {f.name: getattr(features, f.name) for f in dataclasses.fields(SampleFeatures)}
        return cls(**shared, vectors=dict(vectors or {}))

    def only(self, columns: Iterable[str]) -> BuildFeatures:
        """A copy carrying only `columns` of its scores and vectors."""
        wanted = set(columns)
        return dataclasses.replace(
            self,
            scores={k: v for k, v in self.scores.items() if k in wanted},
            vectors={k: v for k, v in self.vectors.items() if k in wanted},
        )


class BuildCheck(CheckPlugin, ABC):
    """One build-wide check: it sees the features of every sample of the build (this
    round's and those of shards written earlier) and tags the keys it rejects.

    The features are grouped (`groups`: the groups a sample joins; by default one group,
    the whole build) and `tag` answers for one group at a time, so the check never needs the
    whole build in one place. A sample's outcome is recorded under the check's `name`; with
    `duplicate`, it joins the sample's `duplicate` outcome instead, which ranks before every
    per-sample check (of several duplicate reasons, the smallest).
    """

    duplicate: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BUILD_CHECKS.add(cls)

    def needs(self) -> tuple[str, ...]:
        """The score columns (scalar or vector) its features must carry. Default: none."""
        return ()

    def groups(self, features: BuildFeatures) -> Iterable[Hashable]:
        """The groups a sample's features join. Default: the one group of the whole build."""
        return ((),)

    @abstractmethod
    def tag(self, features: Sequence[BuildFeatures]) -> Iterable[tuple[str, str]]:
        """(key, reason) of each sample of one group that this check rejects."""


def check_classes() -> dict[str, type[Check]]:
    """Every registered per-sample check by name, in running order (`order`, then name),
    after importing each module of `validators.checks`."""
    return CHECKS.classes()


def build_check_classes() -> dict[str, type[BuildCheck]]:
    """Every registered build-wide check by name, in running order, likewise."""
    return BUILD_CHECKS.classes()


class ClipCheck(Check):
    """A per-sample check of clips (`frozen_clip`, `flicker`): a plug-in key of the recipe's
    `checks`, on in every video build with its options' defaults unless the recipe changes
    them, off with `null` (as a built-in check); refused by name in a build of images."""

    @classmethod
    def clip_options(cls, recipe: Recipe, columns: Sequence[ScoreColumn], *needs: str) -> Any:
        """The check's options in a video build (the defaults when the recipe does not name
        it), None when it is off (an image build, or `null`). RecipeError: named in an image
        build, or a column in `needs` that no scorer writes."""
        given = recipe.checks.plugin_options()
        if not is_video(recipe):
            if cls.name in given:
                raise RecipeError(
                    f"checks.{cls.name}: checks clips, and this recipe makes images "
                    "(sampling.num_frames is not set); remove it"
                )
            return None
        if cls.name in given and given[cls.name] is None:
            return None
        options = cls.recipe_options(recipe)
        have = {c.name for c in columns}
        missing = [n for n in needs if n not in have]
        if missing:
            raise RecipeError(
                f"checks.{cls.name}: needs the `temporal` scorer's {', '.join(missing)} "
                "column(s); add it to scoring.scorers"
            )
        return options if options is not None else cls.options_model()


class PixelCheck(Check):
    """A check that reads an image's pixels.

    It runs with each image's host work, on the pixels already in memory (no decoding; a
    lossy format is decoded once for it and the scorers), and its outcome is recorded in the
    sample's `checks`. `reason` then answers from the record; a sample with none (scored
    outside a build) has its stored image decoded. `pixel_reason` needs nothing `load`ed.
    """

    @abstractmethod
    def pixel_reason(self, sample: Sample, pixels: Any) -> str | None:
        """None to keep, else the reject reason, from uint8 (H, W, 3) `pixels` (a clip's:
        (F, H, W, 3))."""

    def reason(self, sample: Sample) -> str | None:
        recorded = sample.checks.get(self.name)
        if recorded is not None:
            return None if recorded == PASS else recorded
        import numpy as np

        return self.pixel_reason(sample, np.asarray(decode_media(sample)))


def record_pixel_checks(sample: Sample, pixels: Any, checks: Sequence[Check]) -> Sample:
    """`sample` with the outcome of every pixel check among `checks` recorded in `checks`."""
    found = {
        c.name: c.pixel_reason(sample, pixels) or PASS for c in checks if isinstance(c, PixelCheck)
    }
    return dataclasses.replace(sample, checks={**sample.checks, **found}) if found else sample
