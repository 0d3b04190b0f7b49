"""Image conditioning: img2img, inpaint, ControlNet and IP-Adapter, per class if need be."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from synthgen.schemas.recipe.common import _Frozen
from synthgen.schemas.recipe.fields import HashOmit, RecipePath
from synthgen.schemas.recipe.sources import AtPath, LabelledSource

# Conditioning modes a recipe may use; `text` is plain text-to-image. The diffusers pipelines
# behind the image modes are derived from the loaded model (synthgen.generators.conditioning).
# A mode by name: the built-in ones below, or a conditioning-mode plug-in's
# (`synthgen.generators.modes`), checked against the registry before any work.
ConditioningMode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
# Named conditioning-image preprocessors (synthgen.generators.preprocessors).
PREPROCESSORS = ("identity", "canny")


class ConditioningSourceSpec(LabelledSource, AtPath):
    """Labelled images (read like a balance source) that condition the samples of their class.

    Which image a sample uses is a pure function of (recipe seed, key)."""

    mask_column: Annotated[str | None, HashOmit.IF_EMPTY] = Field(
        default=None,
        min_length=1,
        description="inpaint: each image's own mask (white: repainted), read beside it: the "
        "Parquet column, or the WebDataset member extension (`mask.png` for `<key>.mask.png`)",
    )
    mask_folder: Annotated[RecipePath | None, HashOmit.IF_EMPTY] = Field(
        default=None,
        min_length=1,
        description="inpaint, folder sources: a folder of masks mirroring the source folder "
        "(`<class>/<name>.<any image extension>` for the image `<class>/<name>.<ext>`)",
    )

    @model_validator(mode="after")
    def _one_kind_of_masks(self) -> ConditioningSourceSpec:
        if self.mask_column is not None and self.mask_folder is not None:
            raise ValueError(
                "give mask_column (Parquet, WebDataset) or mask_folder (folder), not both"
            )
        return self

    @property
    def has_masks(self) -> bool:
        return self.mask_column is not None or self.mask_folder is not None


class PreprocessorSpec(_Frozen):
    """How a ControlNet's conditioning image is derived from the sample's source image."""

    name: str = Field(default="identity", description="one of: " + ", ".join(PREPROCESSORS))
    low_threshold: int = Field(default=100, ge=0, le=1000, description="canny: lower threshold")
    high_threshold: int = Field(default=200, ge=0, le=1000, description="canny: upper threshold")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PREPROCESSORS:
            choices = ", ".join(PREPROCESSORS)
            raise ValueError(f"unknown preprocessor {v!r}; choose one of {choices}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> PreprocessorSpec:
        if self.low_threshold > self.high_threshold:
            raise ValueError("low_threshold must not exceed high_threshold")
        return self


class ControlNetSpec(_Frozen):
    """One ControlNet folder (diffusers `ControlNetModel`, safetensors) and its image."""

    path: RecipePath = Field(min_length=1, description="a diffusers ControlNetModel folder")
    conditioning_scale: float = Field(
        default=1.0, ge=0.0, le=10.0, description="weight of this ControlNet's residuals"
    )
    image: RecipePath | None = Field(
        default=None,
        description="one conditioning image for every sample; null: derived from the "
        "sample's source image by `preprocessor`",
    )
    preprocessor: PreprocessorSpec = PreprocessorSpec()


class IPAdapterSpec(_Frozen):
    """An IP-Adapter folder: `ip_adapter.safetensors` (`image_proj.*` and `ip_adapter.*`
    tensors) and `image_encoder/` (a CLIPVisionModelWithProjection, safetensors)."""

    path: RecipePath = Field(min_length=1, description="the IP-Adapter folder")
    scale: float = Field(default=1.0, ge=0.0, le=10.0, description="weight of the image prompt")
    image: Annotated[RecipePath | None, HashOmit.IF_EMPTY] = Field(
        default=None,
        description="one image prompt for every sample (of the class, under `per_class`); "
        "null: each sample's own source image",
    )


class ConditioningSpec(_Frozen):
    """How samples are conditioned beyond their prompt (see docs/conditioning.md)."""

    mode: ConditioningMode = Field(
        default="text",
        description="`text` (prompt only), `img2img`, `inpaint`, `controlnet`, `ip_adapter`, "
        "or a mode plug-in's name",
    )
    options: Annotated[dict[str, Any], HashOmit.IF_EMPTY] = Field(
        default_factory=dict,
        description="a mode plug-in's own options (checked by the mode; the built-in modes "
        "take theirs from the fields of this block)",
    )
    source: ConditioningSourceSpec | None = Field(
        default=None,
        description="the images img2img / inpaint start from, or ControlNet derives from",
    )
    strength: float = Field(
        default=0.75, gt=0.0, le=1.0, description="img2img / inpaint: how far from the image"
    )
    mask: RecipePath | None = Field(
        default=None,
        description="inpaint: one mask image (white: repainted) of exactly the sampling size; "
        "per-sample masks come with the source instead (`source.mask_column` / `mask_folder`)",
    )
    resize: Literal["center_crop", "stretch", "pad"] = Field(
        default="center_crop",
        description="how a source image is fitted to the sampling size: scale the short side "
        "and crop the centre, stretch, or scale the long side and pad with black",
    )
    controlnets: list[ControlNetSpec] = Field(
        default_factory=list, max_length=8, description="controlnet: one or more ControlNets"
    )
    ip_adapter: IPAdapterSpec | None = Field(
        default=None,
        description="ip_adapter: the adapter; the image prompt is the sample's source image, or "
        "`ip_adapter.image`",
    )
    per_class: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fields overridden for one class, by class name (e.g. `{three: {mode: text}}`)",
    )

    @model_validator(mode="after")
    def _images_of_mode(self) -> ConditioningSpec:
        if self.mode in ("img2img", "inpaint") and self.source is None:
            raise ValueError(f"mode {self.mode}: needs a `source` of images")
        return self

    @model_validator(mode="after")
    def _masks_of_mode(self) -> ConditioningSpec:
        mode = self.mode
        source_masks = self.source is not None and self.source.has_masks
        if mode == "inpaint" and self.mask is None and not source_masks:
            raise ValueError(
                "mode inpaint: needs a `mask` image, or per-sample masks from the source "
                "(`source.mask_column` or `source.mask_folder`)"
            )
        if mode == "inpaint" and self.mask is not None and source_masks:
            raise ValueError(
                "mode inpaint: give one `mask` for every sample or per-sample masks from the "
                "source, not both"
            )
        if mode != "inpaint" and self.mask is not None:
            raise ValueError(f"mask: only for mode inpaint (mode is {mode})")
        if mode != "inpaint" and source_masks:
            raise ValueError(
                f"source.mask_column / mask_folder: only for mode inpaint (mode is {mode})"
            )
        return self

    @model_validator(mode="after")
    def _controlnets_of_mode(self) -> ConditioningSpec:
        if self.mode == "controlnet":
            if not self.controlnets:
                raise ValueError("mode controlnet: give at least one entry in `controlnets`")
            if self.source is None and any(c.image is None for c in self.controlnets):
                raise ValueError(
                    "mode controlnet: a ControlNet without a fixed `image` derives its image "
                    "from a `source`; give one"
                )
        elif self.controlnets:
            raise ValueError(f"controlnets: only for mode controlnet (mode is {self.mode})")
        return self

    @model_validator(mode="after")
    def _ip_adapter_of_mode(self) -> ConditioningSpec:
        mode = self.mode
        if mode == "ip_adapter" and (
            self.ip_adapter is None
            or (self.source is None and self.ip_adapter.image is None and not self.per_class)
        ):
            raise ValueError(
                "mode ip_adapter: needs an `ip_adapter` and image prompts: a `source` of "
                "images, or one `ip_adapter.image`"
            )
        if mode != "ip_adapter" and self.ip_adapter is not None:
            raise ValueError(f"ip_adapter: only for mode ip_adapter (mode is {mode})")
        for name, override in self.per_class.items():
            # the adapter changes the model's attention: every class uses it, or none; a
            # class may change its image prompt and scale, not the adapter
            own = override.get("ip_adapter")
            other_adapter = own is not None and (
                self.ip_adapter is None
                or not isinstance(own, dict)
                or own.get("path", self.ip_adapter.path) != self.ip_adapter.path
            )
            if (mode == "ip_adapter") != (
                override.get("mode", mode) == "ip_adapter"
            ) or other_adapter:
                raise ValueError(
                    f"per_class.{name}: mode ip_adapter and its adapter apply to every class "
                    "or none (a class may change the adapter's `image` and `scale`, not its "
                    "`path`)"
                )
        return self

    @model_validator(mode="after")
    def _per_class_valid(self) -> ConditioningSpec:
        for name, override in self.per_class.items():
            if "per_class" in override:
                raise ValueError(f"per_class.{name}: overrides cannot nest `per_class`")
            try:
                self.for_class(name)
            except ValidationError as exc:
                msgs = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                    for e in exc.errors()
                )
                raise ValueError(f"per_class.{name}: {msgs}") from None
        return self

    def for_class(self, class_name: str) -> ConditioningSpec:
        """The spec a class uses: this one with the class's `per_class` fields applied."""
        override = self.per_class.get(class_name)
        if not override:
            return self
        if override.get("mode") == "text":
            return ConditioningSpec.model_validate(override)
        base = self.model_dump(exclude={"per_class"})
        merged = {**base, **override}
        if isinstance(base.get("ip_adapter"), dict) and isinstance(
            override.get("ip_adapter"), dict
        ):
            merged["ip_adapter"] = {**base["ip_adapter"], **override["ip_adapter"]}
        return ConditioningSpec.model_validate(merged)
