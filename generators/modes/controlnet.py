"""`controlnet`: one or more ControlNets guide each sample, each by its own conditioning
image: one fixed image for every sample, or one derived from the sample's source image by a
preprocessor. The ControlNets are checked against the base model before anything loads."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
from synthgen.generators.preprocessors import decode_image, fit_image, preprocess
from synthgen.schemas.recipe import ConditioningSpec
from synthgen.schemas.records import GenerationRequest

# ControlNet config fields that must equal the base UNet's (name in the UNet config).
_CONTROLNET_MATCH = ("in_channels", "cross_attention_dim", "block_out_channels")


@dataclass(frozen=True)
class ControlNetEntry:
    """One ControlNet: its folder (path, sha256), weight, preprocessor and fixed image."""

    path: str
    sha256: str
    conditioning_scale: float
    preprocessor: tuple[tuple[str, Any], ...]
    image: FileRef | None = None

    @property
    def preprocessor_params(self) -> dict[str, Any]:
        return dict(self.preprocessor)

    def record(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "conditioning_scale": self.conditioning_scale,
            "preprocessor": self.preprocessor_params,
            "image": None if self.image is None else self.image.record(),
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> ControlNetEntry:
        image = d.get("image")
        return cls(
            str(d["path"]),
            str(d["sha256"]),
            float(d["conditioning_scale"]),
            tuple(sorted(dict(d["preprocessor"]).items())),
            None if image is None else FileRef.from_record(image),
        )


@dataclass(frozen=True)
class ControlNetParams(ModeParams):
    controlnets: tuple[ControlNetEntry, ...] = ()

    def record_extra(self) -> dict[str, Any]:
        return {"controlnets": [n.record() for n in self.controlnets]}

    @classmethod
    def extra_from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"controlnets": tuple(ControlNetEntry.from_record(n) for n in d["controlnets"])}


def _aslist(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def _check_architecture(path: Path, config: dict[str, Any], model_path: Path, where: str) -> None:
    """Latent channels, cross-attention dim, block channels and the conditioning embedding's
    downsampling must fit the base model's UNet and VAE."""
    unet = read_config(model_path / "unet" / "config.json", where)
    vae = read_config(model_path / "vae" / "config.json", where)
    for name in _CONTROLNET_MATCH:
        mine, theirs = config.get(name), unet.get(name)
        if mine is not None and theirs is not None and _aslist(mine) != _aslist(theirs):
            raise ConditioningError(
                f"{where}: {path}: architecture does not match the model: {name} is {mine}, "
                f"the model's UNet has {theirs}"
            )
    embed = config.get("conditioning_embedding_out_channels") or [16, 32, 96, 256]
    down = 2 ** (len(embed) - 1)
    vae_down = 2 ** (len(vae.get("block_out_channels") or [0] * 4) - 1)
    if down != vae_down:
        raise ConditioningError(
            f"{where}: {path}: architecture does not match the model: its conditioning "
            f"embedding downsamples by {down} (conditioning_embedding_out_channels "
            f"{list(embed)}), the model's VAE by {vae_down}"
        )


def check_controlnet(path: Path, model_path: Path, where: str) -> dict[str, Any]:
    """A ControlNet folder checked against the base model, nothing loaded: safetensors only,
    no code, tensor shapes as its config implies, and an architecture that fits the UNet
    (latent channels, cross-attention dim, block channels, conditioning downsampling)."""
    from synthgen.generators.model_folder import ModelFolderError, _check_shapes

    if not path.is_dir():
        raise ConditioningError(f"{where}: {path}: ControlNet folder not found")
    config = read_config(path / "config.json", where)
    if config.get("_class_name") != "ControlNetModel":
        raise ConditioningError(
            f"{where}: {path}/config.json: _class_name {config.get('_class_name')!r} is not "
            "ControlNetModel"
        )
    scan_folder(path, where)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ConditioningError(f"{where}: {path}: no .safetensors weights (only those load)")
    _check_architecture(path, config, model_path, where)
    try:
        from diffusers import ControlNetModel

        _check_shapes(path, ControlNetModel, weights)
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None
    return config


def load_controlnet(path: str, dtype: Any, device: Any) -> Any:
    """A ControlNetModel from its folder's config and safetensors only (a view of links)."""
    from diffusers import ControlNetModel

    folder = Path(path)
    with tempfile.TemporaryDirectory(prefix="synthgen-controlnet-") as tmp:
        view = Path(tmp)
        for p in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
            (view / p.name).symlink_to(p.resolve())
        model = ControlNetModel.from_pretrained(
            str(view), use_safetensors=True, local_files_only=True, dtype=dtype
        )
    return model.to(device).eval()


class ControlNetMode(Mode):
    name = "controlnet"
    params_class = ControlNetParams
    pipelines: ClassVar[dict[str, str]] = {
        "StableDiffusionPipeline": "StableDiffusionControlNetPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLControlNetPipeline",
    }

    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        base = ModeParams(**ctx.common(spec, source))
        nets = []
        for i, cn in enumerate(spec.controlnets):
            where = f"conditioning.controlnets.{i}"
            path, sha = ctx.checked_folder(cn.path, check_controlnet, where)
            pre = cn.preprocessor.model_dump()
            image = None
            if cn.image is not None:
                image, data = ctx.fixed_image(cn.image, f"{where}.image")
                prepare(data, image.path, base, pre)
            entry = ControlNetEntry(
                path, sha, cn.conditioning_scale, tuple(sorted(pre.items())), image
            )
            nets.append(entry)
        return ControlNetParams(**ctx.common(spec, source), controlnets=tuple(nets))

    def source_preprocessors(self, params: ModeParams) -> list[dict[str, Any]]:
        assert isinstance(params, ControlNetParams)
        derived = [n.preprocessor_params for n in params.controlnets if n.image is None]
        return derived or [{"name": "identity"}]

    def pipeline_key(self, params: ModeParams) -> tuple[str, ...]:
        assert isinstance(params, ControlNetParams)
        return tuple(n.path for n in params.controlnets)

    def derive_kwargs(self, pipe: Any, params: ModeParams) -> dict[str, Any]:
        from synthgen.storage.hashing import folder_sha256

        assert isinstance(params, ControlNetParams)
        for n in params.controlnets:
            got = folder_sha256(Path(n.path))
            if got != n.sha256:
                raise ConditioningError(
                    f"{n.path}: the ControlNet folder's content differs from the one "
                    f"recorded (sha256 {got[:12]}, not {n.sha256[:12]})"
                )
        denoiser = pipe.unet
        models = [
            load_controlnet(n.path, denoiser.dtype, denoiser.device) for n in params.controlnets
        ]
        return {"controlnet": models if len(models) > 1 else models[0]}

    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        assert isinstance(params, ControlNetParams)
        w, h, policy = params.width, params.height, params.resize
        images: list[list[Any]] = []
        for net in params.controlnets:
            pre = net.preprocessor_params
            if net.image is not None:
                fixed = decode_image(checked_file(net.image), net.image.path)
                one = preprocess(fit_image(fixed, w, h, policy), pre, net.image.path)
                images.append([one] * len(requests))
            else:
                images.append(
                    [preprocess(inputs.source_image(params, r), pre, r.key) for r in requests]
                )
        scales = [float(n.conditioning_scale) for n in params.controlnets]
        # several ControlNets: diffusers takes one list per prompt (its ControlNets' images)
        # and transposes it; a list per ControlNet would hand each ControlNet the images of
        # one sample, so an image would depend on its neighbours in the call
        return {
            "image": (
                [list(per) for per in zip(*images, strict=True)] if len(images) > 1 else images[0]
            ),
            "controlnet_conditioning_scale": scales if len(scales) > 1 else scales[0],
        }
