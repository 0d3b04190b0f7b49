"""The conditioning-mode interface: one plug-in per way a sample is conditioned beyond its
prompt (text only, img2img, inpaint, ControlNet, IP-Adapter, ...).

A mode lives in three places, like a scorer. On the driver, `validate` checks a class's
recipe fields before anything is read (a clear error naming the field), and `resolve` checks
the mode's own inputs (folders, fixed images, masks) and returns the class's settings as a
frozen, picklable `ModeParams`: what travels to every worker and, as `record()`, what every
sample's provenance stores (canonical JSON). On a worker, `pipeline` derives the mode's
diffusers pipeline from the loaded one once (cached in the worker's `WorkerInputs`), and
`call_inputs` / `wrap` make one call's keyword arguments and callable.

Adding a mode is one new module in this package with a `Mode` subclass that sets `name` and
`params_class`: subclassing registers it, and `mode_classes()` imports every module of the
package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from synthgen.schemas.plugins import Registry
from synthgen.schemas.recipe import ConditioningSpec, Recipe, RecipeError
from synthgen.schemas.records import GenerationRequest

if TYPE_CHECKING:
    from synthgen.generators.modes.inputs import PoolImage, ResolveContext
    from synthgen.generators.modes.worker import WorkerInputs

P = TypeVar("P", bound="ModeParams")


class ConditioningError(RecipeError):
    """Bad conditioning input (source, mask, image, ControlNet); the message names it."""


# -- what the settings name ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRef:
    """One input file by its path and sha256 (a fixed mask, ControlNet image, image prompt)."""

    path: str
    sha256: str

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> FileRef:
        return cls(str(d["path"]), str(d["sha256"]))


@dataclass(frozen=True, slots=True)
class MaskRef:
    """A per-sample mask by its reference in the source (or mask folder) and sha256."""

    reference: str
    sha256: str

    def record(self) -> dict[str, Any]:
        return {"reference": self.reference, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class SourceRef:
    """The conditioning source as workers re-open it: location and how it is read."""

    location: str
    format: str
    label_column: str
    image_column: str
    mask_column: str | None = None
    mask_folder: str | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "location": self.location,
            "format": self.format,
            "label_column": self.label_column,
            "image_column": self.image_column,
        }
        if self.mask_column is not None:
            out["mask_column"] = self.mask_column
        if self.mask_folder is not None:
            out["mask_folder"] = self.mask_folder
        return out

    @classmethod
    def from_record(cls, d: Mapping[str, Any] | None) -> SourceRef | None:
        if d is None:
            return None
        return cls(
            str(d["location"]),
            str(d["format"]),
            str(d["label_column"]),
            str(d["image_column"]),
            d.get("mask_column"),
            d.get("mask_folder"),
        )


@dataclass(frozen=True)
class ModeParams:
    """One class's settings under a mode: frozen, hashable, picklable. `record()` is what
    provenance stores; `from_record` reads it back (regeneration)."""

    mode: str
    resize: str
    width: int
    height: int
    source: SourceRef | None = None

    def record(self) -> dict[str, Any]:
        """The settings as provenance records them (canonical JSON of this dict)."""
        return {
            "mode": self.mode,
            "resize": self.resize,
            "width": self.width,
            "height": self.height,
            "source": None if self.source is None else self.source.record(),
            **self.record_extra(),
        }

    def record_extra(self) -> dict[str, Any]:
        """The mode's own recorded fields beyond the common ones."""
        return {}

    @classmethod
    def from_record(cls: type[P], d: Mapping[str, Any]) -> P:
        return cls(
            mode=str(d["mode"]),
            resize=str(d["resize"]),
            width=int(d["width"]),
            height=int(d["height"]),
            source=SourceRef.from_record(d.get("source")),
            **cls.extra_from_record(d),
        )

    @classmethod
    def extra_from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def group_key(self) -> ModeParams:
        """What requests must share to share a model call (less any per-sample input)."""
        return self

    def per_sample(self, mask: MaskRef) -> ModeParams:
        """These settings for one sample with its own mask (modes with per-sample masks)."""
        raise ConditioningError(f"mode {self.mode}: takes no per-sample mask")


# -- the plug-in ---------------------------------------------------------------------------

MODES: Registry[Mode] = Registry("conditioning mode", "synthgen.generators.modes")
"""Every registered conditioning mode by its name (a registry: `synthgen.schemas.plugins`)."""


class Mode(ABC):
    """One conditioning mode. Subclasses set `name` (as in the recipe's `conditioning.mode`)
    and `params_class`; `pipelines` maps a base pipeline class to the diffusers class the
    mode derives from it with `from_pipe`."""

    name: ClassVar[str]
    params_class: ClassVar[type[ModeParams]] = ModeParams
    pipelines: ClassVar[dict[str, str]] = {}
    # False for a mode that adds nothing to the prompt (text): its classes get no settings
    conditions: ClassVar[bool] = True
    # True for a mode whose samples may each carry their own mask from the source
    per_sample_masks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODES.add(cls)

    # -- driver --------------------------------------------------------------------------
    def validate(
        self, recipe: Recipe, class_name: str, spec: ConditioningSpec, family: str
    ) -> None:
        """Check one class's fields for this mode before anything is read; raises
        ConditioningError naming the field. Default: the family has a pipeline for it."""
        if self.conditions and family not in self.pipelines:
            supported = [n for n, c in mode_classes().items() if family in c.pipelines]
            raise ConditioningError(
                f"conditioning.mode: {self.name} has no diffusers pipeline for {family}; "
                f"it supports {', '.join(supported) or 'text only'}"
            )

    def uses_source(self, spec: ConditioningSpec) -> bool:
        """Whether this class's samples start from images of `spec.source`."""
        return spec.source is not None

    @abstractmethod
    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        """Check this mode's inputs for one class (folders, fixed images, masks; no model
        loaded) and return its settings; raises ConditioningError naming the field."""

    def source_preprocessors(self, params: ModeParams) -> list[dict[str, Any]]:
        """The preprocessors every source image goes through (each is checked on the
        driver): default, the image as it is."""
        return [{"name": "identity"}]

    # -- worker --------------------------------------------------------------------------
    def pipeline_key(self, params: ModeParams) -> tuple[str, ...]:
        """What besides the base pipeline and the mode names the derived pipeline."""
        return ()

    def pipeline(self, inputs: WorkerInputs, pipe: Any, family: str, params: ModeParams) -> Any:
        """The mode's pipeline, made from `pipe` (shared weights) once per worker."""
        return inputs.derived(
            pipe, self.name, self.pipeline_key(params), lambda: self.derive(pipe, family, params)
        )

    def derive(self, pipe: Any, family: str, params: ModeParams) -> Any:
        """A new derived pipeline (uncached): diffusers' `from_pipe` of the family's class."""
        import diffusers

        derived = getattr(diffusers, self.pipelines[family]).from_pipe(
            pipe, **self.derive_kwargs(pipe, params)
        )
        derived.set_progress_bar_config(disable=True)
        return derived

    def derive_kwargs(self, pipe: Any, params: ModeParams) -> dict[str, Any]:
        """Extra components handed to `from_pipe` (ControlNets)."""
        return {}

    @abstractmethod
    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        """The pipeline call's keyword arguments for one group of requests (one per request,
        in order), beyond the prompt and sampling ones."""

    def wrap(
        self,
        derived: Any,
        params: ModeParams,
        requests: Sequence[GenerationRequest],
        inputs: WorkerInputs,
    ) -> Callable[..., Any]:
        """The callable a model call runs: default, `derived` given only the keyword
        arguments its `__call__` names."""
        from synthgen.generators.modes.worker import accepting

        return accepting(derived)


def mode_classes() -> dict[str, type[Mode]]:
    """Every registered mode by name, after importing each module of this package."""
    return MODES.classes()


def get_mode(name: str) -> Mode:
    """The registered mode `name`, or ConditioningError listing the known ones."""
    modes = MODES.classes()
    if name not in modes:
        raise ConditioningError(
            f"conditioning.mode: unknown mode {name!r}; known: {', '.join(modes)}"
        )
    return modes[name]()


def params_from_record(record: Mapping[str, Any]) -> ModeParams:
    """A sample's recorded settings as its mode's params object."""
    return get_mode(str(record["mode"])).params_class.from_record(record)
