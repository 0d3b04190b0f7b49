"""Per-image checks: thresholds on scores, duplicates, near copies, and check plug-ins."""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from synthgen.schemas.recipe.common import SLUG_PATTERN, _Frozen
from synthgen.schemas.recipe.fields import HashOmit


class Threshold(_Frozen):
    """Exactly one of: an absolute value, a per-class quantile, or a per-class kept fraction.

    `quantile: q` rejects each class's worst q of samples by the score: the lowest, or the
    highest for a check that keeps low scores (`light`, `keep: below`); `kept_fraction: f`
    keeps each class's best f (the same as `quantile: 1 - f`).
    """

    absolute: float | None = None
    quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    kept_fraction: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Threshold:
        given = [v is not None for v in (self.absolute, self.quantile, self.kept_fraction)]
        if sum(given) != 1:
            raise ValueError("give exactly one of absolute, quantile, kept_fraction")
        return self

    @property
    def per_class_quantile(self) -> float | None:
        if self.quantile is not None:
            return self.quantile
        if self.kept_fraction is not None:
            return 1.0 - self.kept_fraction
        return None


class ColumnThreshold(Threshold):
    """A threshold on any score column a scorer declares; `keep` says which side passes."""

    keep: Literal["above", "below"] = "above"


class NearDuplicateSpec(_Frozen):
    max_distance: int = Field(
        default=2,
        ge=0,
        le=15,
        description="perceptual-hash Hamming distance; in a video build, bits per frame hash "
        "of the clips' fingerprints",
    )


class NearCopySpec(_Frozen):
    """A sample this close to a reference (or eval-set) image is rejected: its embedding's
    cosine similarity to the nearest image at least `min_similarity`, or that image's
    perceptual hash within `max_phash_distance` bits (null: not compared)."""

    min_similarity: float = Field(default=0.95, ge=-1.0, le=1.0)
    max_phash_distance: int | None = Field(default=None, ge=0, le=64)


class SemanticDuplicateSpec(_Frozen):
    """Within the build: of samples of one class whose embeddings' cosine similarity is at
    least `min_similarity`, the smallest key is kept (SemDeDup-style, per class)."""

    min_similarity: float = Field(default=0.98, ge=-1.0, le=1.0)


class ChecksSpec(_Frozen):
    """Per-image checks; `null` disables one. Names follow cleanvision's vocabulary.

    Any other key names a check plug-in: `{check_name: {options} or null}`; its options are
    checked by the plug-in itself (`plugin_options()`). The clip checks `frozen_clip` and
    `flicker` are such plug-ins: on in every video build with their defaults, refused by name
    in a build of images.
    """

    model_config = ConfigDict(frozen=True, extra="allow", strict=False)

    clip_score: Threshold | None = Threshold(absolute=0.0)
    label_margin: Threshold | None = None
    blurry: Threshold | None = None
    dark: Threshold | None = None
    light: Threshold | None = None
    low_information: Threshold | None = None
    unsafe: Threshold | None = Field(
        default=Threshold(absolute=0.0),
        description="`safety_concepts`: best concept similarity minus its threshold above "
        "this -> rejected and withheld (never written)",
    )
    nsfw: Threshold | None = Field(
        default=Threshold(absolute=0.0),
        description="`safety_checker` (the model folder's own): its concept score above this "
        "-> rejected and withheld",
    )
    odd_size: bool = True
    exact_duplicate: bool = True
    near_duplicate: NearDuplicateSpec | None = None
    near_copy: Annotated[NearCopySpec | None, HashOmit.IF_EMPTY] = Field(
        default=None, description="reject near-copies of a `reference` image (memorization)"
    )
    contaminated: Annotated[NearCopySpec | None, HashOmit.IF_EMPTY] = Field(
        default=None, description="reject near-copies of an `eval_set` image (contamination)"
    )
    semantic_duplicate: Annotated[SemanticDuplicateSpec | None, HashOmit.IF_EMPTY] = None
    scores: dict[str, ColumnThreshold] = Field(
        default_factory=dict,
        description="thresholds on score columns by column name (any scorer's column)",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _plugin_keys(cls, data: Any, handler: ModelWrapValidatorHandler[ChecksSpec]) -> ChecksSpec:
        """A plug-in check's key is a slug, its value a mapping or null; a key one typo away
        from a built-in check is that check misspelt, not a plug-in."""
        if isinstance(data, dict):
            errors = [
                e
                for k, v in data.items()
                if k not in cls.model_fields
                for e in _plugin_key_errors(k, v, list(cls.model_fields))
            ]
            if errors:
                raise ValidationError.from_exception_data(cls.__name__, errors)
        return handler(data)

    def plugin_options(self) -> dict[str, dict[str, Any] | None]:
        """The plug-in checks the recipe names, each with its options (null: the defaults)."""
        return {k: copy.deepcopy(v) for k, v in (self.model_extra or {}).items()}

    @model_validator(mode="after")
    def _light_is_absolute(self) -> ChecksSpec:
        if self.light is not None and self.light.absolute is None:
            raise ValueError("light: only an absolute threshold is supported")
        return self


def _plugin_key_errors(key: Any, value: Any, builtin: list[str]) -> list[InitErrorDetails]:
    """Why `key: value` cannot name a check plug-in (none: it can)."""
    import difflib

    if not isinstance(key, str) or not re.fullmatch(SLUG_PATTERN, key) or len(key) > 64:
        problem = PydanticCustomError(
            "check_name", "a check plug-in's name is a slug (lower-case letters, digits, _ and -)"
        )
        return [InitErrorDetails(type=problem, loc=(str(key),), input=key)]
    if difflib.get_close_matches(key, builtin, n=1, cutoff=0.8):
        return [InitErrorDetails(type="extra_forbidden", loc=(key,), input=value)]
    if value is not None and not isinstance(value, dict):
        problem = PydanticCustomError(
            "check_options",
            "a check plug-in's options are a mapping or null, not {kind}",
            {"kind": type(value).__name__},
        )
        return [InitErrorDetails(type=problem, loc=(key,), input=value)]
    return []
