"""`img2img`: each sample starts from a source image of its class, `strength` from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from synthgen.generators.modes.base import ConditioningError, Mode, ModeParams, SourceRef
from synthgen.generators.modes.inputs import PoolImage, ResolveContext
from synthgen.generators.modes.worker import WorkerInputs
from synthgen.schemas.recipe import ConditioningSpec, Recipe
from synthgen.schemas.records import GenerationRequest


@dataclass(frozen=True)
class StrengthParams(ModeParams):
    """Settings of a mode that denoises from an image: how far from it (`strength`)."""

    strength: float = 0.75

    def record_extra(self) -> dict[str, Any]:
        return {"strength": self.strength}

    @classmethod
    def extra_from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"strength": float(d["strength"])}


def check_strength(recipe: Recipe, class_name: str, strength: float) -> None:
    """diffusers runs int(steps * strength) steps: at least one must be left."""
    cls = next(c for c in recipe.classes if c.name == class_name)
    steps = getattr(cls, "steps", None) or recipe.sampling.steps
    if int(steps * strength) < 1:
        raise ConditioningError(
            f"conditioning.strength: {strength} of {steps} steps leaves no denoising step "
            f"for class {class_name!r}; raise the strength or the steps"
        )


class Img2ImgMode(Mode):
    name = "img2img"
    params_class = StrengthParams
    pipelines: ClassVar[dict[str, str]] = {
        "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusion3Pipeline": "StableDiffusion3Img2ImgPipeline",
        "FluxPipeline": "FluxImg2ImgPipeline",
    }

    def validate(
        self, recipe: Recipe, class_name: str, spec: ConditioningSpec, family: str
    ) -> None:
        super().validate(recipe, class_name, spec, family)
        check_strength(recipe, class_name, spec.strength)

    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        return StrengthParams(**ctx.common(spec, source), strength=spec.strength)

    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        assert isinstance(params, StrengthParams)
        return {
            "image": [inputs.source_image(params, r) for r in requests],
            "strength": float(params.strength),
        }
