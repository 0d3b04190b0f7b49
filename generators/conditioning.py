"""Image-conditioned generation: img2img, inpaint and ControlNet on top of the loaded model.

1. `resolve_conditioning` (driver, before any output): reads the conditioning source once
   (the same readers as balancing), hashes every image, checks the mask, the preprocessors
   and each ControlNet against the base model; returns small `ConditioningSettings`.
2. `assign_sources` (worker): which source image a sample starts from is a pure function of
   (recipe seed, key), like its seed; the choice and the mode's settings go into the
   request's provenance fields.
3. `conditioned_call` (worker): the pipeline for a mode is derived from the loaded one with
   diffusers' `from_pipe` (one set of weights in memory); the inputs are read back by
   reference, checked against their sha256, fitted to the sampling size and preprocessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from synthgen.generators.preprocessors import (
    PreprocessorError,
    decode_image,
    fit_image,
    preprocess,
)
from synthgen.generators.sources.base import (
    PixelLimit,
    Source,
    SourceError,
    image_size,
    inside_root,
)
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import (
    BALANCE_IMG2IMG_STRENGTH,
    BalanceSpec,
    ConditioningSourceSpec,
    ConditioningSpec,
    Recipe,
    RecipeError,
    resolve_path,
)
from synthgen.schemas.records import GenerationRequest, canonical_json
from synthgen.storage.model_files import read_json_object

logger = logging.getLogger(__name__)

__all__ = [
    "ClassConditioning",
    "ConditioningError",
    "ConditioningSettings",
    "assign_sources",
    "conditioned_call",
    "conditioning_from_provenance",
    "effective_specs",
    "group_by_conditioning",
    "pick_source",
    "resolve_conditioning",
]

# Pipeline class -> mode -> the diffusers class derived from it with `from_pipe`.
DERIVED_PIPELINES: dict[str, dict[str, str]] = {
    "StableDiffusionPipeline": {
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "controlnet": "StableDiffusionControlNetPipeline",
        "ip_adapter": "StableDiffusionPipeline",  # the adapter is loaded into the model
    },
    "StableDiffusionXLPipeline": {
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "controlnet": "StableDiffusionXLControlNetPipeline",
        "ip_adapter": "StableDiffusionXLPipeline",
    },
    "StableDiffusion3Pipeline": {
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpaint": "StableDiffusion3InpaintPipeline",
    },
    "FluxPipeline": {"img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
}

# ControlNet config fields that must equal the base UNet's (name in the UNet config).
_CONTROLNET_MATCH = ("in_channels", "cross_attention_dim", "block_out_channels")


class ConditioningError(RecipeError):
    """Bad conditioning input (source, mask, image, ControlNet); the message names it."""


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassConditioning:
    """One class's conditioning: its mode, the mode's settings (canonical JSON, recorded in
    every sample's provenance) and its source images as (reference, sha256), in source order.

    `masks`: with per-sample masks, each pool image's mask as (reference, sha256), in the
    same order. `text_share`: the share of the class's samples left text-only (a balancing
    mix), chosen per sample from (recipe seed, key) by `pick_mode`."""

    mode: str
    params: str
    pool: tuple[tuple[str, str], ...] = ()
    masks: tuple[tuple[str, str], ...] = ()
    text_share: float = 0.0


@dataclass(frozen=True)
class ConditioningSettings:
    """What workers need: small, picklable; a pure function of the recipe and the inputs."""

    seed: int
    classes: tuple[tuple[int, ClassConditioning], ...]

    def for_class(self, class_id: int) -> ClassConditioning | None:
        for cid, cc in self.classes:
            if cid == class_id:
                return cc
        return None

    def content_sha256(self) -> str:
        """A fingerprint of every input behind the settings: source images (by sha256), mask,
        fixed images and ControlNet folders (their sha256 sit in `params`)."""
        rows: list[list[Any]] = []
        for cid, cc in self.classes:
            row: list[Any] = [cid, cc.mode, cc.params, [list(p) for p in cc.pool]]
            if cc.masks or cc.text_share:  # rows without them hash as before
                row += [[list(m) for m in cc.masks], cc.text_share]
            rows.append(row)
        return hashlib.sha256(canonical_json(rows).encode()).hexdigest()


def pick_source(recipe_seed: int, key: str, n: int) -> int:
    """Index of the source image a sample starts from: a stable hash of (recipe seed, key)."""
    digest = hashlib.sha256(f"synthgen-conditioning:{recipe_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


def mix_draw(recipe_seed: int, key: str) -> float:
    """A sample's draw in [0, 1) for a mix of modes: a stable hash of (recipe seed, key),
    independent of `pick_source`'s."""
    digest = hashlib.sha256(f"synthgen-conditioning-mix:{recipe_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def pick_mode(recipe_seed: int, key: str, text_share: float) -> bool:
    """Whether a sample of a mixed class is text-only: its draw falls below `text_share`."""
    return text_share > 0.0 and mix_draw(recipe_seed, key) < text_share


def assign_sources(
    settings: ConditioningSettings, requests: Sequence[GenerationRequest]
) -> list[GenerationRequest]:
    """Each request with its conditioning provenance filled in (text-only classes unchanged).

    A request that already names its source (regeneration from provenance) keeps it."""
    out = []
    for r in requests:
        cc = settings.for_class(r.class_label)
        if cc is None or cc.mode == "text" or pick_mode(settings.seed, r.key, cc.text_share):
            out.append(r)
            continue
        ref, sha = r.conditioning_source, r.conditioning_source_sha256
        params = r.conditioning or cc.params
        if ref is None and cc.pool:
            i = pick_source(settings.seed, r.key, len(cc.pool))
            ref, sha = cc.pool[i]
            if cc.masks:  # the mask read alongside this source image, in provenance
                mask_ref, mask_sha = cc.masks[i]
                with_mask = json.loads(cc.params)
                with_mask["mask"] = {"reference": mask_ref, "sha256": mask_sha}
                params = canonical_json(with_mask)
        out.append(
            dataclasses.replace(
                r,
                conditioning_mode=cc.mode,
                conditioning_source=ref,
                conditioning_source_sha256=sha,
                conditioning=params,
            )
        )
    return out


def call_group_key(conditioning: str | None) -> str:
    """What requests must share to share a model call: their conditioning settings, less a
    per-sample mask (read per request, like the source image)."""
    if not conditioning or '"reference"' not in conditioning:
        return conditioning or ""
    params = json.loads(conditioning)
    mask = params.get("mask")
    if isinstance(mask, dict) and "reference" in mask:
        params["mask"] = "per-sample"
        return canonical_json(params)
    return conditioning


def group_by_conditioning(requests: Sequence[GenerationRequest]) -> list[list[GenerationRequest]]:
    """Requests grouped by their conditioning settings (one pipeline call shape per group),
    in order of first appearance; text-only requests form one group."""
    groups: dict[str, list[GenerationRequest]] = {}
    for r in requests:
        groups.setdefault(call_group_key(r.conditioning), []).append(r)
    return list(groups.values())


# -- sources -------------------------------------------------------------------------------


def _open(source: dict[str, Any], limit: PixelLimit | None = None) -> Source:
    """The source a recipe's (or a worker's described) source names, read by its own reader."""
    from synthgen.generators.sources.open import open_source

    spec = BalanceSpec(
        source=source["location"],
        format=source["format"],
        label_column=source["label_column"],
        image_column=source["image_column"],
    )
    return open_source(spec, source["location"], limit)


# (mask reference, encoded mask) read beside a source image; None without per-sample masks
Mask = tuple[str, bytes] | None


def _iter_images(
    src: Source, mask_column: str | None = None, mask_folder: Path | None = None
) -> Iterator[tuple[str, str, bytes, Mask]]:
    """(reference, label, image bytes, mask) for every image of a source, in its order, as
    the source's own reader gives them (`Source.iter_images`). With `mask_column` (Parquet:
    a column; WebDataset: a member extension) or `mask_folder` (folder sources), each image's
    own mask comes beside it; a missing one raises SourceError naming the image."""
    from synthgen.generators.sources.folder_source import FolderSource

    if mask_folder is not None and not isinstance(src, FolderSource):
        raise SourceError(f"{src.description}: mask_folder is for image folders; use mask_column")
    for image in src.iter_images(mask_column):
        mask: Mask = None
        if image.mask is not None:
            mask = (image.reference, image.mask)
        elif mask_folder is not None:
            mask = _folder_mask(mask_folder, image.reference)
            if src.limit is not None:
                src.limit.check(image_size(mask[1], mask[0]), f"{mask_folder}/{mask[0]}")
        yield image.reference, image.label, image.data, mask


def _folder_mask_path(folder: Path, reference: str) -> Path:
    """The mask of the folder image `reference` (`class/name.ext`) in a mask folder that
    mirrors the source: the same relative path, else the same name with one other image
    extension. Raises SourceError when there is none, or several."""
    from synthgen.generators.sources.folder_source import IMAGE_SUFFIXES

    same = folder / reference
    rel = Path(reference)
    candidates = (
        [same]
        if same.is_file()
        else [p for suffix in IMAGE_SUFFIXES if (p := folder / rel.with_suffix(suffix)).is_file()]
    )
    if not candidates:
        raise SourceError(
            f"{folder}: no mask for {reference} (looked for {rel.with_suffix('.*').as_posix()})"
        )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise SourceError(f"{folder}: several masks for {reference}: {names}")
    path = candidates[0]
    if not inside_root(path.resolve(), folder.resolve()):
        raise SourceError(f"{path}: leads out of the mask folder {folder}")
    return path


def _folder_mask(folder: Path, reference: str) -> tuple[str, bytes]:
    path = _folder_mask_path(folder, reference)
    return path.relative_to(folder).as_posix(), path.read_bytes()


def read_source_mask(source: dict[str, Any], reference: str) -> bytes:
    """The encoded bytes of one per-sample mask, by its reference: a path in the mask folder,
    or the row / sample of its image (the mask column / member)."""
    if source.get("mask_folder"):
        folder = Path(source["mask_folder"])
        path = (folder / reference).resolve()
        if not inside_root(path, folder.resolve()):
            raise SourceError(f"{reference}: leads out of the mask folder {folder}")
        return path.read_bytes()
    column = source.get("mask_column")
    if not column:
        raise SourceError(f"{source['location']}: the source has no masks")
    return _open(source).read(reference, column)


def read_source_image(source: dict[str, Any], reference: str) -> bytes:
    """The encoded bytes of one source image, by its reference (workers, regeneration), read
    by the same reader that listed it (`Source.read`)."""
    return _open(source).read(reference)


def _source_format(src: Source) -> str:
    from synthgen.generators.sources.folder_source import FolderSource
    from synthgen.generators.sources.parquet_source import ParquetSource

    if isinstance(src, FolderSource):
        return "folder"
    if isinstance(src, ParquetSource):
        return "parquet"
    return "webdataset"


# -- resolving -----------------------------------------------------------------------------


def effective_specs(recipe: Recipe) -> dict[int, ConditioningSpec] | None:
    """Class id -> the conditioning it uses; None when the recipe is text-only.

    `balance.conditioning: img2img` conditions every class on its own real images from the
    balance source (strength `balance.strength`)."""
    balance = recipe.balance
    if balance is not None and balance.uses_img2img:
        spec = ConditioningSpec(
            mode="img2img",
            strength=balance.strength or BALANCE_IMG2IMG_STRENGTH,
            source=ConditioningSourceSpec(
                path=balance.source,
                format=balance.format,
                label_column=balance.label_column,
                image_column=balance.image_column,
                label_type=balance.label_type,
            ),
        )
        return {c.id: spec for c in recipe.classes}
    if recipe.conditioning is None:
        return None
    specs = {c.id: recipe.conditioning.for_class(c.name) for c in recipe.classes}
    if all(s.mode == "text" for s in specs.values()):
        return None
    return specs


def _location(base_dir: Path, raw: str) -> str:
    if any(c in raw for c in "{*?["):  # a shard pattern, not a single path
        return raw if Path(raw).is_absolute() else str(base_dir / raw)
    return str(resolve_path(base_dir, raw))


@dataclass(frozen=True)
class PoolImage:
    """One source image of a class: reference, sha256, bytes, and its mask's (or None)."""

    ref: str
    sha256: str
    data: bytes
    mask: tuple[str, str, bytes] | None = None


def _read_pool(
    recipe: Recipe,
    spec: ConditioningSourceSpec,
    location: str,
    where: str,
    mask_folder: Path | None = None,
) -> tuple[dict[str, Any], dict[int, list[PoolImage]]]:
    """The source's description (for workers) and its images (with masks) per class id."""
    from synthgen.generators.sources.open import label_resolver

    try:
        src = _open(
            {
                "location": location,
                "format": spec.format,
                "label_column": spec.label_column,
                "image_column": spec.image_column,
            },
            PixelLimit(recipe.sampling.width, recipe.sampling.height),
        )
        resolve = label_resolver(recipe, spec.label_type)
        by_class: dict[int, list[PoolImage]] = {c.id: [] for c in recipe.classes}
        unknown: set[str] = set()
        for ref, label, data, mask in _iter_images(src, spec.mask_column, mask_folder):
            class_id = resolve(label)
            if class_id is None:
                unknown.add(label)
                continue
            with_sha = None if mask is None else (mask[0], _sha(mask[1]), mask[1])
            by_class[class_id].append(PoolImage(ref, _sha(data), data, with_sha))
    except (SourceError, OSError) as exc:
        raise ConditioningError(f"{where}: {exc}") from None
    if unknown:
        raise ConditioningError(
            f"{where}: {src.description}: labels not among the recipe's classes: "
            f"{', '.join(sorted(unknown)[:10])}"
        )
    described = {
        "location": location,
        "format": _source_format(src),
        "label_column": spec.label_column,
        "image_column": spec.image_column,
    }
    if spec.mask_column is not None:
        described["mask_column"] = spec.mask_column
    if mask_folder is not None:
        described["mask_folder"] = str(mask_folder)
    return described, by_class


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fixed_image(base_dir: Path, raw: str, where: str) -> tuple[dict[str, str], bytes]:
    path = resolve_path(base_dir, raw)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConditioningError(f"{where}: {path}: cannot read: {exc.strerror or exc}") from None
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()}, data


def _check_mask(data: bytes, path: str, width: int, height: int) -> None:
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


def _json(path: Path, where: str) -> dict[str, Any]:
    """`read_json_object`, its error named after the recipe field that led to the file."""
    try:
        return read_json_object(path, "model folder")
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None


def check_controlnet(path: Path, model_path: Path, where: str) -> dict[str, Any]:
    """A ControlNet folder checked against the base model, nothing loaded: safetensors only,
    no code, tensor shapes as its config implies, and an architecture that fits the UNet
    (latent channels, cross-attention dim, block channels, conditioning downsampling)."""
    from synthgen.generators.model_folder import ModelFolderError, _check_shapes, scan_files

    if not path.is_dir():
        raise ConditioningError(f"{where}: {path}: ControlNet folder not found")
    config = _json(path / "config.json", where)
    if config.get("_class_name") != "ControlNetModel":
        raise ConditioningError(
            f"{where}: {path}/config.json: _class_name {config.get('_class_name')!r} is not "
            "ControlNetModel"
        )
    try:
        scan_files(path)
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ConditioningError(f"{where}: {path}: no .safetensors weights (only those load)")
    unet = _json(model_path / "unet" / "config.json", where)
    vae = _json(model_path / "vae" / "config.json", where)
    for name in _CONTROLNET_MATCH:
        mine, theirs = config.get(name), unet.get(name)
        if mine is not None and theirs is not None and list(_aslist(mine)) != list(_aslist(theirs)):
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
    try:
        from diffusers import ControlNetModel

        _check_shapes(path, ControlNetModel, weights)
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None
    return config


IP_ADAPTER_WEIGHTS = "ip_adapter.safetensors"


def check_ip_adapter(path: Path, model_path: Path, where: str) -> None:
    """An IP-Adapter folder checked against the base model, nothing loaded: its weights file
    (safetensors), its image encoder (config + safetensors, no code), and dimensions that fit
    the encoder's projection and the UNet's cross-attention."""
    from synthgen.generators.model_folder import ModelFolderError, scan_files
    from synthgen.storage.model_files import safetensors_header

    if not path.is_dir():
        raise ConditioningError(f"{where}: {path}: IP-Adapter folder not found")
    try:
        scan_files(path)
    except ModelFolderError as exc:
        raise ConditioningError(f"{where}: {exc}") from None
    weights = path / IP_ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConditioningError(f"{where}: {path}: no {IP_ADAPTER_WEIGHTS}")
    try:
        shapes = {k: tuple(shape) for k, (_, shape) in safetensors_header(weights).items()}
    except Exception as exc:
        raise ConditioningError(f"{where}: {weights}: unreadable safetensors: {exc}") from None
    encoder = _json(path / "image_encoder" / "config.json", where)
    if not sorted((path / "image_encoder").glob("*.safetensors")):
        raise ConditioningError(f"{where}: {path}/image_encoder: no .safetensors weights")
    unet = _json(model_path / "unet" / "config.json", where)
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


def _aslist(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def resolve_conditioning(
    recipe: Recipe,
    base_dir: Path,
    model_path: Path,
    pipeline_class: str,
    locate: Callable[[Path, str], str] | None = None,
) -> ConditioningSettings | None:
    """Check every conditioning input and build the workers' settings; load no model.

    `locate(base_dir, source)` turns a recipe's source into a readable location (the driver
    passes one that also fetches object-store URLs); by default local paths and patterns.

    Raises ConditioningError naming the problem: a missing or unreadable source, a class
    with no source image, an image a preprocessor cannot read, an unreadable or wrong-size
    mask, a ControlNet that does not fit the base model, a mode the family has no pipeline
    for."""
    from synthgen.storage.hashing import folder_sha256

    specs = effective_specs(recipe)
    if specs is None:
        return None
    s = recipe.sampling
    family_modes = DERIVED_PIPELINES.get(pipeline_class, {})
    balance = recipe.balance
    from_balance = balance is not None and balance.uses_img2img
    where_source = "balance.source" if from_balance else "conditioning.source"
    # a balancing mix leaves this share of every class's top-ups text-only
    text_share = balance.mix.get("text", 0.0) if balance is not None and from_balance else 0.0
    pools: dict[tuple[str, str], tuple[dict[str, Any], dict[int, list[Any]]]] = {}
    controlnet_sha: dict[str, str] = {}
    classes: list[tuple[int, ClassConditioning]] = []
    for c in recipe.classes:
        spec = specs[c.id]
        if spec.mode == "text":
            continue
        if spec.mode not in family_modes:
            raise ConditioningError(
                f"conditioning.mode: {spec.mode} has no diffusers pipeline for {pipeline_class}; "
                f"it supports {', '.join(family_modes) or 'text only'}"
            )
        params: dict[str, Any] = {
            "mode": spec.mode,
            "resize": spec.resize,
            "width": s.width,
            "height": s.height,
            "source": None,
        }
        pool: list[PoolImage] = []
        fixed_prompt = (
            spec.mode == "ip_adapter"
            and spec.ip_adapter is not None
            and (spec.ip_adapter.image is not None)
        )
        if spec.source is not None and not fixed_prompt:
            location = (locate or _location)(base_dir, spec.source.path)
            cache_key = (location, spec.source.model_dump_json())
            if cache_key not in pools:
                mask_folder = None
                if spec.source.mask_folder is not None:
                    mask_folder = Path((locate or _location)(base_dir, spec.source.mask_folder))
                    if not mask_folder.is_dir():
                        raise ConditioningError(
                            f"conditioning.source.mask_folder: {mask_folder}: folder not found"
                        )
                pools[cache_key] = _read_pool(
                    recipe, spec.source, location, where_source, mask_folder
                )
            described, by_class = pools[cache_key]
            params["source"] = described
            pool = by_class[c.id]
            if not pool:
                raise ConditioningError(
                    f"{where_source}: {described['location']} has no image of class {c.name!r} "
                    f"to condition it on ({spec.mode})"
                )
        if spec.mode in ("img2img", "inpaint"):
            params["strength"] = spec.strength
            steps = getattr(c, "steps", None) or s.steps
            if int(steps * spec.strength) < 1:  # diffusers runs int(steps * strength) steps
                raise ConditioningError(
                    f"conditioning.strength: {spec.strength} of {steps} steps leaves no "
                    f"denoising step for class {c.name!r}; raise the strength or the steps"
                )
        if spec.mode == "inpaint" and spec.mask is not None:
            mask, data = _fixed_image(base_dir, spec.mask, "conditioning.mask")
            _check_mask(data, mask["path"], s.width, s.height)
            params["mask"] = mask
        elif spec.mode == "inpaint":  # per-sample masks: each fits its own image
            for item in pool:
                assert item.mask is not None
                _check_source_mask(item, params)
        if spec.mode == "ip_adapter":
            assert spec.ip_adapter is not None
            path = resolve_path(base_dir, spec.ip_adapter.path)
            if str(path) not in controlnet_sha:
                check_ip_adapter(path, model_path, "conditioning.ip_adapter")
                controlnet_sha[str(path)] = folder_sha256(path)
            params["ip_adapter"] = {
                "path": str(path),
                "sha256": controlnet_sha[str(path)],
                "scale": spec.ip_adapter.scale,
            }
            if spec.ip_adapter.image is not None:  # one image prompt for the class
                where = "conditioning.ip_adapter.image"
                params["ip_adapter"]["image"], data = _fixed_image(
                    base_dir, spec.ip_adapter.image, where
                )
                _prepare(data, params["ip_adapter"]["image"]["path"], params, {"name": "identity"})
        derive: list[dict[str, Any]] = []
        if spec.mode == "controlnet":
            nets = []
            for i, cn in enumerate(spec.controlnets):
                where = f"conditioning.controlnets.{i}"
                path = resolve_path(base_dir, cn.path)
                if str(path) not in controlnet_sha:
                    check_controlnet(path, model_path, where)
                    controlnet_sha[str(path)] = folder_sha256(path)
                entry: dict[str, Any] = {
                    "path": str(path),
                    "sha256": controlnet_sha[str(path)],
                    "conditioning_scale": cn.conditioning_scale,
                    "preprocessor": cn.preprocessor.model_dump(),
                    "image": None,
                }
                if cn.image is not None:
                    entry["image"], data = _fixed_image(base_dir, cn.image, f"{where}.image")
                    _prepare(data, entry["image"]["path"], params, entry["preprocessor"])
                else:
                    derive.append(entry["preprocessor"])
                nets.append(entry)
            params["controlnets"] = nets
        # every source image this class may use must fit and preprocess now, not on a worker
        for item in pool:
            for pre in derive or [{"name": "identity"}]:
                _prepare(item.data, item.ref, params, pre)
        masks = tuple((m[0], m[1]) for item in pool if (m := item.mask) is not None)
        classes.append(
            (
                c.id,
                ClassConditioning(
                    spec.mode,
                    canonical_json(params),
                    tuple((item.ref, item.sha256) for item in pool),
                    masks=masks if spec.mode == "inpaint" else (),
                    text_share=text_share,
                ),
            )
        )
    if not classes:
        return None
    return ConditioningSettings(seed=recipe.seed, classes=tuple(classes))


def _check_source_mask(item: PoolImage, params: dict[str, Any]) -> None:
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


def fit_mask(mask: Any, params: dict[str, Any]) -> Any:
    """A per-sample mask fitted like its image (same policy, nearest-neighbour: it stays a
    mask)."""
    return fit_image(
        mask, int(params["width"]), int(params["height"]), str(params["resize"]), "nearest"
    )


def _prepare(data: bytes, where: str, params: dict[str, Any], pre: dict[str, Any]) -> Any:
    """An input image as the model gets it (decoded, fitted, preprocessed); one declaring
    more pixels than `PixelLimit` allows for the sampling size is refused undecoded."""
    try:
        PixelLimit(int(params["width"]), int(params["height"])).check(
            image_size(data, where), where
        )
        image = decode_image(data, where)
        fitted = fit_image(image, int(params["width"]), int(params["height"]), params["resize"])
        return preprocess(fitted, pre, where)
    except (SourceError, PreprocessorError) as exc:
        raise ConditioningError(f"conditioning: {exc}") from None


def conditioning_from_provenance(prov: dict[str, Any]) -> ConditioningSettings | None:
    """The settings that regenerate one sample from its provenance (its own source image)."""
    mode = prov.get("conditioning_mode")
    if mode in (None, "text"):
        return None
    params = prov["conditioning"]
    text = params if isinstance(params, str) else canonical_json(params)
    ref, sha = prov.get("conditioning_source"), prov.get("conditioning_source_sha256")
    pool = ((str(ref), str(sha)),) if ref is not None else ()
    cc = ClassConditioning(str(mode), text, pool)
    return ConditioningSettings(seed=0, classes=((int(prov["class_label"]), cc),))


# -- generating ----------------------------------------------------------------------------

# (id of the base pipeline, mode, ControlNet folders) -> (base pipeline, derived pipeline);
# the base is kept so its id cannot be reused while the entry lives.
_DERIVED: dict[tuple[int, str, tuple[str, ...]], tuple[Any, Any]] = {}
_MAX_DERIVED = 8


def _controlnet(path: str, dtype: Any, device: Any) -> Any:
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


def derived_pipeline(pipe: Any, pipeline_class: str, params: dict[str, Any]) -> Any:
    """The mode's pipeline, made from `pipe` with `from_pipe` once per worker (shared weights)."""
    import diffusers

    mode = str(params["mode"])
    nets = tuple(str(n["path"]) for n in params.get("controlnets", []))
    key = (id(pipe), mode, nets)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0] is pipe:
        return hit[1]
    if mode == "ip_adapter":
        _load_ip_adapter(pipe, params["ip_adapter"])
        _DERIVED[key] = (pipe, pipe)
        return pipe
    cls = getattr(diffusers, DERIVED_PIPELINES[pipeline_class][mode])
    extra: dict[str, Any] = {}
    if nets:
        from synthgen.storage.hashing import folder_sha256

        for n in params["controlnets"]:
            got = folder_sha256(Path(n["path"]))
            if got != n["sha256"]:
                raise ConditioningError(
                    f"{n['path']}: the ControlNet folder's content differs from the one "
                    f"recorded (sha256 {got[:12]}, not {str(n['sha256'])[:12]})"
                )
        denoiser = pipe.unet
        models = [_controlnet(n, denoiser.dtype, denoiser.device) for n in nets]
        extra["controlnet"] = models if len(models) > 1 else models[0]
    derived = cls.from_pipe(pipe, **extra)
    derived.set_progress_bar_config(disable=True)
    if len(_DERIVED) >= _MAX_DERIVED:
        _DERIVED.pop(next(iter(_DERIVED)))
    _DERIVED[key] = (pipe, derived)
    return derived


def _load_ip_adapter(pipe: Any, entry: dict[str, Any]) -> None:
    """Load an IP-Adapter into `pipe` from safetensors only: the image encoder from its own
    folder (a view of its config and weights), the adapter as a state dict."""
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from synthgen.storage.hashing import folder_sha256

    folder = Path(entry["path"])
    got = folder_sha256(folder)
    if got != entry["sha256"]:
        raise ConditioningError(
            f"{folder}: the IP-Adapter folder's content differs from the one recorded "
            f"(sha256 {got[:12]}, not {str(entry['sha256'])[:12]})"
        )
    denoiser = pipe.unet
    with tempfile.TemporaryDirectory(prefix="synthgen-ip-adapter-") as tmp:
        view = Path(tmp)
        sub = folder / "image_encoder"
        for p in [sub / "config.json", *sorted(sub.glob("*.safetensors"))]:
            (view / p.name).symlink_to(p.resolve())
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(view), use_safetensors=True, local_files_only=True, dtype=denoiser.dtype
        )
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
    pipe.set_ip_adapter_scale(float(entry["scale"]))


_IMAGES: dict[tuple[str, str], bytes] = {}


def _source_bytes(params: dict[str, Any], ref: str, sha: str | None) -> bytes:
    """A source image's bytes by reference, checked against the sha256 planned for it."""
    cached = _IMAGES.get((ref, sha or ""))
    if cached is not None:
        return cached
    data = read_source_image(params["source"], ref)
    got = hashlib.sha256(data).hexdigest()
    if sha is not None and got != sha:
        raise ConditioningError(
            f"{params['source']['location']}: {ref} changed: its sha256 is {got[:12]}, the "
            f"sample was made from {sha[:12]}"
        )
    if len(_IMAGES) > 4096:
        _IMAGES.clear()
    _IMAGES[(ref, sha or "")] = data
    return data


def _file_bytes(entry: dict[str, Any]) -> bytes:
    path = Path(entry["path"])
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise ConditioningError(
            f"{path}: changed: its sha256 is {got[:12]}, not {entry['sha256'][:12]}"
        )
    return data


def conditioned_call(
    pipe: Any, pipeline_class: str, requests: Sequence[GenerationRequest]
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The pipeline to call for a group of requests sharing one conditioning, and its image
    inputs (one per request, in order). Text-only requests get `pipe` itself."""
    first = requests[0]
    if first.conditioning is None or first.conditioning_mode in (None, "text"):
        return pipe, {}
    params = json.loads(first.conditioning)
    derived = derived_pipeline(pipe, pipeline_class, params)
    w, h, policy = int(params["width"]), int(params["height"]), str(params["resize"])

    def source(r: GenerationRequest) -> Any:
        assert r.conditioning_source is not None
        data = _source_bytes(params, r.conditioning_source, r.conditioning_source_sha256)
        return fit_image(decode_image(data, r.conditioning_source), w, h, policy)

    mode = params["mode"]
    kwargs: dict[str, Any] = {}
    if mode in ("img2img", "inpaint"):
        kwargs["image"] = [source(r) for r in requests]
        kwargs["strength"] = float(params["strength"])
    if mode == "inpaint" and "reference" in params["mask"]:  # per-sample masks
        kwargs["mask_image"] = [_sample_mask(r) for r in requests]
    elif mode == "inpaint":
        mask = decode_image(_file_bytes(params["mask"]), params["mask"]["path"], "L")
        kwargs["mask_image"] = [mask] * len(requests)
    if mode == "ip_adapter":
        adapter = params["ip_adapter"]
        if adapter.get("image") is not None:  # the class's one image prompt
            entry = adapter["image"]
            fixed = fit_image(decode_image(_file_bytes(entry), entry["path"]), w, h, policy)
            prompts = [fixed] * len(requests)
        else:
            prompts = [source(r) for r in requests]
        return _with_image_prompts(derived, prompts, float(adapter["scale"])), {}
    if mode == "controlnet":
        images: list[list[Any]] = []
        for net in params["controlnets"]:
            if net["image"] is not None:
                fixed = fit_image(
                    decode_image(_file_bytes(net["image"]), net["image"]["path"]), w, h, policy
                )
                one = preprocess(fixed, net["preprocessor"], net["image"]["path"])
                images.append([one] * len(requests))
            else:
                images.append(
                    [preprocess(source(r), net["preprocessor"], str(r.key)) for r in requests]
                )
        scales = [float(n["conditioning_scale"]) for n in params["controlnets"]]
        # several ControlNets: diffusers takes one list per prompt (its ControlNets' images)
        # and transposes it; a list per ControlNet would hand each ControlNet the images of
        # one sample, so an image would depend on its neighbours in the call
        kwargs["image"] = (
            [list(per) for per in zip(*images, strict=True)] if len(images) > 1 else images[0]
        )
        kwargs["controlnet_conditioning_scale"] = scales if len(scales) > 1 else scales[0]
    return _accepting(derived), kwargs


def _sample_mask(r: GenerationRequest) -> Any:
    """A request's own mask (named in its conditioning), checked and fitted like its image."""
    assert r.conditioning is not None
    params = json.loads(r.conditioning)
    entry = params["mask"]
    cached = _IMAGES.get(("mask:" + entry["reference"], entry["sha256"]))
    if cached is None:
        cached = read_source_mask(params["source"], entry["reference"])
        got = hashlib.sha256(cached).hexdigest()
        if got != entry["sha256"]:
            raise ConditioningError(
                f"{params['source']['location']}: the mask {entry['reference']} changed: its "
                f"sha256 is {got[:12]}, the sample was made with {str(entry['sha256'])[:12]}"
            )
        if len(_IMAGES) > 4096:
            _IMAGES.clear()
        _IMAGES[("mask:" + entry["reference"], entry["sha256"])] = cached
    return fit_mask(decode_image(cached, entry["reference"], "L"), params)


def _with_image_prompts(pipe: Any, images: list[Any], scale: float) -> Callable[..., Any]:
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


def _accepting(pipe: Any) -> Callable[..., Any]:
    """`pipe` called with only the keyword arguments its `__call__` names (img2img takes no
    height/width: the size is the image's)."""
    params = inspect.signature(pipe.__call__).parameters
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}

    def call(**kwargs: Any) -> Any:
        return pipe(**{k: v for k, v in kwargs.items() if k in named})

    return call
