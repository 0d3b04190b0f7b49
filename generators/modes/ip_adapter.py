"""`ip_adapter`: an IP-Adapter loaded into the model takes an image prompt per sample: the
sample's own source image, or one fixed image for the class (`ip_adapter.image`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from synthgen.generators.modes.base import (
    ConditioningError,
    FileRef,
    Mode,
    ModeParams,
    SourceRef,
)
from synthgen.generators.modes.inputs import (
    PoolImage,
    ResolveContext,
    prepare,
    read_config,
    scan_folder,
)
from synthgen.generators.modes.worker import WorkerInputs, checked_file
from synthgen.generators.preprocessors import decode_image, fit_image
from synthgen.schemas.recipe import ConditioningSpec
from synthgen.schemas.records import GenerationRequest

IP_ADAPTER_WEIGHTS = "ip_adapter.safetensors"


@dataclass(frozen=True)
class IpAdapterEntry:
    """The adapter folder (path, sha256), its scale and the class's fixed image prompt."""

    path: str
    sha256: str
    scale: float
    image: FileRef | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "scale": self.scale}
        if self.image is not None:
            out["image"] = self.image.record()
        return out

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> IpAdapterEntry:
        image = d.get("image")
        return cls(
            str(d["path"]),
            str(d["sha256"]),
            float(d["scale"]),
            None if image is None else FileRef.from_record(image),
        )


@dataclass(frozen=True)
class IpAdapterParams(ModeParams):
    ip_adapter: IpAdapterEntry | None = None

    def record_extra(self) -> dict[str, Any]:
        assert self.ip_adapter is not None
        return {"ip_adapter": self.ip_adapter.record()}

    @classmethod
    def extra_from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"ip_adapter": IpAdapterEntry.from_record(d["ip_adapter"])}


def _dimensions(path: Path, weights: Path, model_path: Path, where: str) -> None:
    """The adapter's projection fits its encoder, its cross-attention the model's UNet."""
    from synthgen.storage.model_files import safetensors_header

    try:
        shapes = {k: tuple(shape) for k, (_, shape) in safetensors_header(weights).items()}
    except Exception as exc:
        raise ConditioningError(f"{where}: {weights}: unreadable safetensors: {exc}") from None
    encoder = read_config(path / "image_encoder" / "config.json", where)
    if not sorted((path / "image_encoder").glob("*.safetensors")):
        raise ConditioningError(f"{where}: {path}/image_encoder: no .safetensors weights")
    unet = read_config(model_path / "unet" / "config.json", where)
    proj = shapes.get("image_proj.proj.weight")
    to_k = shapes.get("ip_adapter.1.to_k_ip.weight")
    if proj is None or to_k is None:
        raise ConditioningError(
            f"{where}: {weights}: not an IP-Adapter (no image_proj.proj.weight / "
            "ip_adapter.1.to_k_ip.weight)"
        )
    cross = unet.get("cross_attention_dim")
    if to_k[1] != cross or proj[0] % max(1, int(cross or 1)):
        raise ConditioningError(
            f"{where}: {path}: architecture does not match the model: the adapter's "
            f"cross-attention dim is {to_k[1]}, the model's UNet has {cross}"
        )
    if proj[1] != encoder.get("projection_dim"):
        raise ConditioningError(
            f"{where}: {path}: the adapter projects {proj[1]}-dim image embeddings, its image "
            f"encoder makes {encoder.get('projection_dim')}"
        )


def check_ip_adapter(path: Path, model_path: Path, where: str) -> None:
    """An IP-Adapter folder checked against the base model, nothing loaded: its weights file
    (safetensors), its image encoder (config + safetensors, no code), and dimensions that fit
    the encoder's projection and the UNet's cross-attention."""
    if not path.is_dir():
        raise ConditioningError(f"{where}: {path}: IP-Adapter folder not found")
    scan_folder(path, where)
    weights = path / IP_ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConditioningError(f"{where}: {path}: no {IP_ADAPTER_WEIGHTS}")
    _dimensions(path, weights, model_path, where)


def _image_encoder(folder: Path, dtype: Any) -> Any:
    """The adapter's CLIP image encoder from its config and safetensors (a view of links)."""
    from transformers import CLIPVisionModelWithProjection

    with tempfile.TemporaryDirectory(prefix="synthgen-ip-adapter-") as tmp:
        view = Path(tmp)
        sub = folder / "image_encoder"
        for p in [sub / "config.json", *sorted(sub.glob("*.safetensors"))]:
            (view / p.name).symlink_to(p.resolve())
        return CLIPVisionModelWithProjection.from_pretrained(
            str(view), use_safetensors=True, local_files_only=True, dtype=dtype
        )


def load_ip_adapter(pipe: Any, entry: IpAdapterEntry) -> None:
    """Load an IP-Adapter into `pipe` from safetensors only: the image encoder from its own
    folder, the adapter as a state dict."""
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor

    from synthgen.storage.hashing import folder_sha256

    folder = Path(entry.path)
    got = folder_sha256(folder)
    if got != entry.sha256:
        raise ConditioningError(
            f"{folder}: the IP-Adapter folder's content differs from the one recorded "
            f"(sha256 {got[:12]}, not {entry.sha256[:12]})"
        )
    denoiser = pipe.unet
    encoder = _image_encoder(folder, denoiser.dtype)
    size = int(cast(Any, encoder.config).image_size)
    extractor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    pipe.register_modules(image_encoder=encoder.to(denoiser.device).eval())
    pipe.register_modules(feature_extractor=extractor)
    flat = load_file(str(folder / IP_ADAPTER_WEIGHTS))
    state: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for name, tensor in flat.items():
        part, _, rest = name.partition(".")
        if part in state:
            state[part][rest] = tensor
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(float(entry.scale))


def with_image_prompts(pipe: Any, images: list[Any], scale: float) -> Callable[..., Any]:
    """`pipe` called with one image prompt per sample.

    diffusers treats the images (or embeddings) it is given as one image prompt for the whole
    batch and repeats it per sample, so a sample would see its neighbours' images. Here each
    sample's embedding is computed on its own row, shaped (batch, 1 image, dim) with the zero
    negative in front under classifier-free guidance, and handed to the UNet as it is."""

    def call(**kwargs: Any) -> Any:
        import torch

        positive, negative = pipe.encode_image(images, pipe._execution_device, 1)
        embeds = positive[:, None]
        if float(kwargs.get("guidance_scale", 1.0)) > 1.0:
            embeds = torch.cat([negative[:, None], embeds])
        pipe.prepare_ip_adapter_image_embeds = lambda *args, **kw: [embeds]
        pipe.set_ip_adapter_scale(scale)  # the class's own (calls share one conditioning)
        try:
            return pipe(**kwargs, ip_adapter_image_embeds=[embeds])
        finally:
            del pipe.prepare_ip_adapter_image_embeds

    return call


class IpAdapterMode(Mode):
    name = "ip_adapter"
    params_class = IpAdapterParams
    # the adapter is loaded into the model: the pipeline is the model's own
    pipelines: ClassVar[dict[str, str]] = {
        "StableDiffusionPipeline": "StableDiffusionPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLPipeline",
    }

    def uses_source(self, spec: ConditioningSpec) -> bool:
        fixed = spec.ip_adapter is not None and spec.ip_adapter.image is not None
        return spec.source is not None and not fixed

    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        assert spec.ip_adapter is not None
        where = "conditioning.ip_adapter"
        path, sha = ctx.checked_folder(spec.ip_adapter.path, check_ip_adapter, where)
        image = None
        if spec.ip_adapter.image is not None:  # one image prompt for the class
            image, data = ctx.fixed_image(spec.ip_adapter.image, f"{where}.image")
            prepare(data, image.path, ModeParams(**ctx.common(spec, source)), {"name": "identity"})
        entry = IpAdapterEntry(path, sha, spec.ip_adapter.scale, image)
        return IpAdapterParams(**ctx.common(spec, source), ip_adapter=entry)

    def derive(self, pipe: Any, family: str, params: ModeParams) -> Any:
        assert isinstance(params, IpAdapterParams) and params.ip_adapter is not None
        load_ip_adapter(pipe, params.ip_adapter)
        return pipe

    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        return {}

    def wrap(
        self,
        derived: Any,
        params: ModeParams,
        requests: Sequence[GenerationRequest],
        inputs: WorkerInputs,
    ) -> Callable[..., Any]:
        assert isinstance(params, IpAdapterParams) and params.ip_adapter is not None
        entry = params.ip_adapter
        if entry.image is not None:  # the class's one image prompt
            fixed = decode_image(checked_file(entry.image), entry.image.path)
            one = fit_image(fixed, params.width, params.height, params.resize)
            prompts = [one] * len(requests)
        else:
            prompts = [inputs.source_image(params, r) for r in requests]
        return with_image_prompts(derived, prompts, float(entry.scale))
