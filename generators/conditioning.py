"""Image-conditioned generation: the modes (`generators.modes`) on top of the loaded model.

1. `resolve_conditioning` (driver, before any output): every class's mode checks its fields
   (`Mode.validate`), the conditioning source is read once (`Source.iter_images`, the same
   readers as balancing) and every image hashed, and each mode checks its own inputs and
   returns its frozen settings (`Mode.resolve`); the result is small `ConditioningSettings`.
2. `assign_sources` (worker): which source image a sample starts from is a pure function of
   (recipe seed, key), like its seed; the choice and the mode's settings (as recorded,
   canonical JSON) go into the request's provenance fields.
3. `conditioned_call` (worker): the mode's pipeline is derived from the loaded one with
   diffusers' `from_pipe` (one set of weights in memory) and its inputs are read back by
   reference (`Source.read`), checked against their sha256, fitted and preprocessed; what was
   derived and read is kept on the loaded model (`WorkerInputs`), not in this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.generators.modes.base import (
    ConditioningError,
    MaskRef,
    Mode,
    ModeParams,
    SourceRef,
    get_mode,
    mode_classes,
    params_from_record,
)
from synthgen.generators.modes.inputs import PoolImage, ResolveContext, prepare
from synthgen.generators.sources.base import (
    PixelLimit,
    Source,
    SourceError,
    SourceOptions,
    image_size,
    inside_root,
)
from synthgen.schemas.media import IMAGE_SUFFIXES
from synthgen.schemas.recipe import (
    BALANCE_IMG2IMG_STRENGTH,
    ConditioningSourceSpec,
    ConditioningSpec,
    Recipe,
    resolve_path,
)
from synthgen.schemas.records import GenerationRequest, canonical_json

if TYPE_CHECKING:
    from synthgen.generators.handler import LoadedModel

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


def derived_pipelines() -> dict[str, dict[str, str]]:
    """Pipeline class -> mode -> the diffusers class each mode derives from it."""
    out: dict[str, dict[str, str]] = {}
    for name, cls in mode_classes().items():
        for family, derived in cls.pipelines.items():
            out.setdefault(family, {})[name] = derived
    return out


DERIVED_PIPELINES = derived_pipelines()


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassConditioning:
    """One class's conditioning: its mode, the mode's settings (`params`, recorded in every
    sample's provenance as `params.record()`) and its source images as (reference, sha256),
    in source order.

    `masks`: with per-sample masks, each pool image's mask as (reference, sha256), in the
    same order. `text_share`: the share of the class's samples left text-only (a balancing
    mix), chosen per sample from (recipe seed, key) by `pick_mode`."""

    mode: str
    params: ModeParams
    pool: tuple[tuple[str, str], ...] = ()
    masks: tuple[tuple[str, str], ...] = ()
    text_share: float = 0.0

    @cached_property
    def record(self) -> str:
        """The settings as provenance records them: canonical JSON."""
        return canonical_json(self.params.record())

    def pool_index(self, seed: int, request: GenerationRequest) -> int:
        """The pool position of the request's source image (`pick_source`'s choice, else
        where the image it names sits)."""
        i = pick_source(seed, request.key, len(self.pool))
        if self.pool[i][0] == request.conditioning_source:
            return i
        for j, (ref, _) in enumerate(self.pool):
            if ref == request.conditioning_source:
                return j
        raise ConditioningError(f"{request.key}: {request.conditioning_source} is no source image")


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

    def params_for(self, request: GenerationRequest) -> ModeParams | None:
        """The settings one (assigned) request is generated under, its own mask included."""
        cc = self.for_class(request.class_label)
        if cc is None or request.conditioning_mode in (None, "text"):
            return None
        if not cc.masks:
            return cc.params
        mask = cc.masks[cc.pool_index(self.seed, request)]
        return cc.params.per_sample(MaskRef(*mask))

    def content_sha256(self) -> str:
        """A fingerprint of every input behind the settings: source images (by sha256), mask,
        fixed images and ControlNet folders (their sha256 sit in the params)."""
        rows: list[list[Any]] = []
        for cid, cc in self.classes:
            row: list[Any] = [cid, cc.mode, cc.record, [list(p) for p in cc.pool]]
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
        record = r.conditioning or cc.record
        if ref is None and cc.pool:
            i = pick_source(settings.seed, r.key, len(cc.pool))
            ref, sha = cc.pool[i]
            if cc.masks:  # the mask read alongside this source image, in provenance
                record = canonical_json(cc.params.per_sample(MaskRef(*cc.masks[i])).record())
        out.append(
            dataclasses.replace(
                r,
                conditioning_mode=cc.mode,
                conditioning_source=ref,
                conditioning_source_sha256=sha,
                conditioning=record,
            )
        )
    return out


def group_by_conditioning(
    settings: ConditioningSettings, requests: Sequence[GenerationRequest]
) -> list[list[GenerationRequest]]:
    """Assigned requests grouped by the settings they share a model call under (less a
    per-sample mask, read per request like the source image), in order of first
    appearance; text-only requests form one group."""
    groups: dict[ModeParams | None, list[GenerationRequest]] = {}
    for r in requests:
        params = settings.params_for(r)
        groups.setdefault(None if params is None else params.group_key(), []).append(r)
    return list(groups.values())


# -- sources -------------------------------------------------------------------------------


def _folder_mask_path(folder: Path, reference: str) -> Path:
    """The mask of the folder image `reference` (`class/name.ext`) in a mask folder that
    mirrors the source: the same relative path, else the same name with one other image
    extension. Raises SourceError when there is none, or several."""
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


def _with_masks(
    src: Source, mask_column: str | None, mask_folder: Path | None
) -> Iterator[tuple[str, str, bytes, tuple[str, bytes] | None]]:
    """(reference, label, image, mask) for every image of a source (`Source.iter_images`);
    the mask (reference, bytes) comes from the mask column / member, or the mask folder."""
    if mask_folder is not None and src.format != "folder":
        raise SourceError(f"{src.description}: mask_folder is for image folders; use mask_column")
    for image in src.iter_images(mask_column):
        mask = None if image.mask is None else (image.reference, image.mask)
        if mask is None and mask_folder is not None:
            path = _folder_mask_path(mask_folder, image.reference)
            mask = (path.relative_to(mask_folder).as_posix(), path.read_bytes())
            if src.limit is not None:
                src.limit.check(image_size(mask[1], mask[0]), f"{mask_folder}/{mask[0]}")
        yield image.reference, image.label, image.data, mask


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_pool(
    recipe: Recipe,
    spec: ConditioningSourceSpec,
    location: str,
    where: str,
    mask_folder: Path | None = None,
) -> tuple[SourceRef, dict[int, list[PoolImage]]]:
    """The source as workers re-open it and its images (with masks) per class id."""
    from synthgen.generators.sources.open import label_resolver, open_source

    try:
        limit = PixelLimit(recipe.sampling.width, recipe.sampling.height)
        src = open_source(location, SourceOptions.of(spec), limit)
        resolve = label_resolver(recipe, spec.label_type)
        by_class: dict[int, list[PoolImage]] = {c.id: [] for c in recipe.classes}
        unknown: set[str] = set()
        for ref, label, data, mask in _with_masks(src, spec.mask_column, mask_folder):
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
    described = SourceRef(
        location,
        src.format,
        spec.label_column,
        spec.image_column,
        spec.mask_column,
        None if mask_folder is None else str(mask_folder),
    )
    return described, by_class


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


@dataclass
class _Pools:
    """Each conditioning source read once, however many classes use it."""

    recipe: Recipe
    base_dir: Path
    locate: Callable[[Path, str], str]
    where: str
    read: dict[tuple[str, str], tuple[SourceRef, dict[int, list[PoolImage]]]] = dataclasses.field(
        default_factory=dict
    )

    def get(self, spec: ConditioningSourceSpec) -> tuple[SourceRef, dict[int, list[PoolImage]]]:
        location = self.locate(self.base_dir, spec.path)
        key = (location, spec.model_dump_json())
        if key not in self.read:
            mask_folder = None
            if spec.mask_folder is not None:
                mask_folder = Path(self.locate(self.base_dir, spec.mask_folder))
                if not mask_folder.is_dir():
                    raise ConditioningError(
                        f"conditioning.source.mask_folder: {mask_folder}: folder not found"
                    )
            self.read[key] = _read_pool(self.recipe, spec, location, self.where, mask_folder)
        return self.read[key]


def _resolve_class(
    ctx: ResolveContext,
    pools: _Pools,
    mode: Mode,
    class_id: int,
    spec: ConditioningSpec,
    text_share: float,
) -> ClassConditioning:
    """One class's settings: its source images, the mode's params, every image checked to
    fit and preprocess now (not on a worker)."""
    name = next(c.name for c in ctx.recipe.classes if c.id == class_id)
    source: SourceRef | None = None
    pool: list[PoolImage] = []
    if mode.uses_source(spec):
        assert spec.source is not None
        source, by_class = pools.get(spec.source)
        pool = by_class[class_id]
        if not pool:
            raise ConditioningError(
                f"{pools.where}: {source.location} has no image of class {name!r} to "
                f"condition it on ({spec.mode})"
            )
    params = mode.resolve(ctx, name, spec, source, pool)
    for item in pool:
        for pre in mode.source_preprocessors(params):
            prepare(item.data, item.ref, params, pre)
    masks: tuple[tuple[str, str], ...] = ()
    if mode.per_sample_masks:
        masks = tuple((m[0], m[1]) for item in pool if (m := item.mask) is not None)
    refs = tuple((item.ref, item.sha256) for item in pool)
    return ClassConditioning(spec.mode, params, refs, masks=masks, text_share=text_share)


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

    Every class's mode checks its fields first (`Mode.validate`), before any source is read.
    Raises ConditioningError naming the problem: a missing or unreadable source, a class
    with no source image, an image a preprocessor cannot read, an unreadable or wrong-size
    mask, a ControlNet that does not fit the base model, a mode the family has no pipeline
    for."""
    specs = effective_specs(recipe)
    if specs is None:
        return None
    modes = {c.id: get_mode(specs[c.id].mode) for c in recipe.classes}
    for c in recipe.classes:
        modes[c.id].validate(recipe, c.name, specs[c.id], pipeline_class)
    balance = recipe.balance
    from_balance = balance is not None and balance.uses_img2img
    where = "balance.source" if from_balance else "conditioning.source"
    # a balancing mix leaves this share of every class's top-ups text-only
    text_share = balance.mix.get("text", 0.0) if balance is not None and from_balance else 0.0
    ctx = ResolveContext(recipe, base_dir, model_path, pipeline_class)
    pools = _Pools(recipe, base_dir, locate or _location, where)
    classes = [
        (c.id, _resolve_class(ctx, pools, modes[c.id], c.id, specs[c.id], text_share))
        for c in recipe.classes
        if modes[c.id].conditions
    ]
    if not classes:
        return None
    return ConditioningSettings(seed=recipe.seed, classes=tuple(classes))


def conditioning_from_provenance(prov: dict[str, Any]) -> ConditioningSettings | None:
    """The settings that regenerate one sample from its provenance (its own source image)."""
    import json

    mode = prov.get("conditioning_mode")
    if mode in (None, "text"):
        return None
    recorded = prov["conditioning"]
    params = params_from_record(json.loads(recorded) if isinstance(recorded, str) else recorded)
    ref, sha = prov.get("conditioning_source"), prov.get("conditioning_source_sha256")
    pool = ((str(ref), str(sha)),) if ref is not None else ()
    cc = ClassConditioning(str(mode), params, pool)
    return ConditioningSettings(seed=0, classes=((int(prov["class_label"]), cc),))


# -- generating ----------------------------------------------------------------------------


def conditioned_call(
    model: LoadedModel, pipeline_class: str, requests: Sequence[GenerationRequest]
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The callable to run for a group of requests sharing one conditioning, and its image
    inputs (one per request, in order). Text-only requests get the model's pipeline itself."""
    inputs = model.inputs
    params = inputs.params_for(requests[0])
    if params is None:
        return model.pipe, {}
    mode = get_mode(params.mode)
    derived = mode.pipeline(inputs, model.pipe, pipeline_class, params)
    kwargs = mode.call_inputs(params, requests, inputs)
    return mode.wrap(derived, params, requests, inputs), kwargs
