"""`inpaint`: each sample repaints the white part of a mask over a source image of its
class: one mask for every sample (exactly the sampling size), or each image's own mask read
beside it from the source (`source.mask_column` / `mask_folder`), fitted like its image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from synthgen.generators.modes.base import (
    ConditioningError,
    FileRef,
    MaskRef,
    ModeParams,
    SourceRef,
)
from synthgen.generators.modes.img2img import Img2ImgMode, StrengthParams
from synthgen.generators.modes.inputs import PoolImage, ResolveContext, fit_mask
from synthgen.generators.modes.worker import WorkerInputs, checked_file
from synthgen.generators.preprocessors import PreprocessorError, decode_image
from synthgen.generators.sources.base import SourceError, image_size
from synthgen.schemas.recipe import ConditioningSpec
from synthgen.schemas.records import GenerationRequest


@dataclass(frozen=True)
class InpaintParams(StrengthParams):
    """`mask`: the class's one mask file, one sample's own mask, or None (per-sample masks
    not yet assigned: the class's settings)."""

    mask: FileRef | MaskRef | None = None

    def record_extra(self) -> dict[str, Any]:
        out = super().record_extra()
        if self.mask is not None:
            out["mask"] = self.mask.record()
        return out

    @classmethod
    def extra_from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        mask = d.get("mask")
        ref: FileRef | MaskRef | None = None
        if isinstance(mask, Mapping) and "reference" in mask:
            ref = MaskRef(str(mask["reference"]), str(mask["sha256"]))
        elif isinstance(mask, Mapping):
            ref = FileRef.from_record(mask)
        return {**super().extra_from_record(d), "mask": ref}

    def group_key(self) -> ModeParams:
        return replace(self, mask=None) if isinstance(self.mask, MaskRef) else self

    def per_sample(self, mask: MaskRef) -> ModeParams:
        return replace(self, mask=mask)


def check_fixed_mask(data: bytes, path: str, width: int, height: int) -> None:
    """The recipe's one mask: exactly the sampling size, read from its header before it is
    decoded (a small file can declare a huge image)."""
    try:
        w, h = image_size(data, path)
        if (w, h) == (width, height):
            decode_image(data, path, "L")
    except (SourceError, PreprocessorError) as exc:
        raise ConditioningError(f"conditioning.mask: {exc}") from None
    if (w, h) != (width, height):
        raise ConditioningError(
            f"conditioning.mask: {path} is {w}x{h}; it must be exactly "
            f"the sampling size {width}x{height}"
        )


def check_source_mask(item: PoolImage) -> None:
    """A per-sample mask must decode and be the size of its image (it is fitted with it);
    the sizes are compared on the headers, before the mask is decoded."""
    assert item.mask is not None
    ref = item.mask[0]
    try:
        mask_size = image_size(item.mask[2], f"mask {ref}")
        size = image_size(item.data, item.ref)
        if mask_size == size:
            decode_image(item.mask[2], f"mask {ref}", "L")
    except (SourceError, PreprocessorError) as exc:
        raise ConditioningError(f"conditioning.source: {exc}") from None
    if mask_size != size:
        raise ConditioningError(
            f"conditioning.source: the mask {ref} is {mask_size[0]}x{mask_size[1]}, its image "
            f"{item.ref} is {size[0]}x{size[1]}; a mask must be its image's size"
        )


class InpaintMode(Img2ImgMode):
    name = "inpaint"
    params_class = InpaintParams
    per_sample_masks = True
    pipelines: ClassVar[dict[str, str]] = {
        "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
        "StableDiffusion3Pipeline": "StableDiffusion3InpaintPipeline",
        "FluxPipeline": "FluxInpaintPipeline",
    }

    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        mask: FileRef | None = None
        if spec.mask is not None:
            mask, data = ctx.fixed_image(spec.mask, "conditioning.mask")
            s = ctx.recipe.sampling
            check_fixed_mask(data, mask.path, s.width, s.height)
        else:  # per-sample masks: each fits its own image
            for item in pool:
                check_source_mask(item)
        return InpaintParams(**ctx.common(spec, source), strength=spec.strength, mask=mask)

    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        assert isinstance(params, InpaintParams)
        kwargs = super().call_inputs(params, requests, inputs)
        if isinstance(params.mask, FileRef):
            mask = decode_image(checked_file(params.mask), params.mask.path, "L")
            kwargs["mask_image"] = [mask] * len(requests)
        else:  # per-sample masks: each request's own
            kwargs["mask_image"] = [self._sample_mask(r, inputs) for r in requests]
        return kwargs

    def _sample_mask(self, request: GenerationRequest, inputs: WorkerInputs) -> Any:
        params = inputs.params_for(request)
        assert isinstance(params, InpaintParams) and isinstance(params.mask, MaskRef)
        assert params.source is not None
        data = inputs.mask_bytes(params.source, params.mask)
        return fit_mask(decode_image(data, params.mask.reference, "L"), params)
