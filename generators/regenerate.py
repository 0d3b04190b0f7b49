"""Rebuild one sample from its provenance record alone (promise 5).

The record is a tar `.json` sidecar (full provenance), or a Parquet row merged with the build
constants its file carries (`find_provenance`): rows keep only what varies per sample.

A record names its inputs (model folder, adapters, conditioning sources, images, ControlNet
and IP-Adapter folders) as the recipe wrote them relative to its folder, else by name, with
their sha256: never by a path of the machine that made the build. `Inputs` finds them again
(the model with `--model`, the rest in `--inputs` folders, the recipe's folder, the current
directory); whatever is found must have the recorded sha256. Records made before published
paths were relative hold absolute paths: those are tried as they are.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.generators.conditioning import conditioning_from_provenance
from synthgen.generators.model_folder import ModelFolderError, load_pipeline
from synthgen.generators.provenance_bounds import check_provenance_bounds
from synthgen.generators.sources.webdataset_source import is_pattern
from synthgen.schemas.manifest import STATE_DIR, STATE_NAME, BuildState
from synthgen.schemas.media import DEFAULT_VIDEO_FORMAT
from synthgen.schemas.recipe.sampling import DEFAULT_FPS
from synthgen.schemas.records import (
    REJECT_IMAGE_FIELD,
    GenerationRequest,
    canonical_json,
    provenance_from_row,
    public_path,
    read_build_constants,
)
from synthgen.storage.hashing import file_sha256, folder_sha256
from synthgen.storage.watermark import watermark_payload

if TYPE_CHECKING:  # the handler imports torch and Beam: only once the inputs are found
    from synthgen.generators.handler import GenerationSettings


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _optional(kind: Any, value: Any) -> Any:
    return None if value is None else kind(value)


def _slots_json(value: Any) -> str | None:
    return None if value is None else canonical_json(_loads(value))


class ProvenanceNotFound(ValueError):
    """A build directory holds no single provenance record for a key."""


class InputNotFound(ModelFolderError):
    """An input a provenance record names is nowhere regeneration looks, or differs there."""


@dataclass(frozen=True)
class Inputs:
    """Where regeneration looks for the inputs a provenance record names.

    Each recorded path is tried, in order: `model` (the model folder, `--model`); the
    building machine's own path for it (`places`, a local build's private state: local path
    -> as recorded); the recorded path itself when absolute (older records); relative to
    each of `dirs`; by its name in each of `dirs`. The first candidate with the recorded
    content (sha256) is taken; one with other content is never used."""

    model: Path | None = None
    places: Mapping[str, str] = field(default_factory=dict)
    dirs: tuple[Path, ...] = ()

    @classmethod
    def for_build(
        cls, build_dir: Path, model: Path | None = None, inputs: Sequence[Path] = ()
    ) -> Inputs:
        """For a sample of the build in `build_dir`: the `inputs` folders, then the recipe's
        folder and the local paths of its private state (when it was built here), its own
        `adapters/` folder (trained LoRAs), then the current directory."""
        state = _read_state(build_dir)
        dirs = [*inputs]
        if state is not None and state.recipe_dir:
            dirs.append(Path(state.recipe_dir))
        dirs += [build_dir / "adapters", build_dir, Path.cwd()]
        places = state.paths if state is not None else {}
        return cls(model, places, tuple(dirs))

    def find(
        self,
        recorded: str,
        what: str,
        matches: Callable[[Path], bool],
        how: str = "--inputs DIR",
        explicit: Path | None = None,
    ) -> Path:
        """The local path of the input recorded as `recorded` whose content `matches`.

        Raises InputNotFound naming it, where it looked, and the option (`how`) that names
        it; a candidate with other content is named as differing."""
        candidates = [] if explicit is None else [explicit]
        candidates += [Path(local) for local, shown in self.places.items() if shown == recorded]
        own = Path(recorded).expanduser()
        if own.is_absolute():
            candidates.append(own)
        else:
            candidates += [d / own for d in self.dirs]
        name = public_path(recorded)
        if name not in ("", ".", ".."):
            candidates += [d / name for d in self.dirs]
        seen: set[Path] = set()
        differs: list[Path] = []
        for c in candidates:
            if c in seen or not c.exists():
                continue
            seen.add(c)
            if matches(c):
                return c
            differs.append(c)
            if c == explicit:
                break
        if differs:
            raise InputNotFound(
                f"{differs[0]}: the {what}'s content differs from the one recorded as "
                f"{recorded!r} (sha256); pass the right one with {how}"
            )
        looked = ", ".join(str(d) for d in self.dirs) or "nowhere"
        raise InputNotFound(
            f"{what} {recorded!r} not found (recorded relative to the recipe's folder, or by "
            f"name; looked in: {looked}); pass it with {how}"
        )


def _read_state(build_dir: Path) -> BuildState | None:
    try:
        return BuildState.model_validate_json((build_dir / STATE_DIR / STATE_NAME).read_bytes())
    except (OSError, ValueError):
        return None


def _folder_is(sha: str) -> Callable[[Path], bool]:
    return lambda p: p.is_dir() and folder_sha256(p) == sha


def _file_is(sha: str) -> Callable[[Path], bool]:
    return lambda p: p.is_file() and file_sha256(p) == sha


def _present(p: Path) -> bool:
    return p.exists()


def localize(prov: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """`prov` with every input it names replaced by its local path, each found by `inputs`
    with its recorded content: the model folder, adapter files, the conditioning source (and
    a WebDataset reference into it), mask folder, fixed images, ControlNet and IP-Adapter
    folders. Raises InputNotFound naming the first that is not found."""
    out = dict(prov)
    model = inputs.find(
        str(prov["model_path"]),
        "model folder",
        _folder_is(str(prov["model_sha256"])),
        "--model PATH",
        inputs.model,
    )
    out["model_path"] = str(model)
    table = json.loads(json.dumps(_loads(prov.get("adapters") or {}) or {}))  # its own copy
    if table:
        per_class = table.get("classes", {}).values()
        for ref in [*table.get("all", []), *(r for refs in per_class for r in refs)]:
            found = inputs.find(str(ref["path"]), "adapter file", _file_is(str(ref["sha256"])))
            ref["path"] = str(found)
        out["adapters"] = table
    if prov.get("conditioning_mode") not in (None, "text") and prov.get("conditioning"):
        params = json.loads(json.dumps(_loads(prov["conditioning"])))  # its own copy
        out["conditioning"] = params
        out["conditioning_source"] = _localize_conditioning(
            params, prov.get("conditioning_source"), inputs
        )
    return out


def _localize_conditioning(params: dict[str, Any], ref: Any, inputs: Inputs) -> Any:
    """Localize a mode's settings in place; returns the sample's source reference, local."""
    source = params.get("source")
    if isinstance(source, dict):
        location = str(source["location"])
        if is_pattern(location):  # a shard pattern
            source["location"] = _find_pattern(location, inputs)
        else:
            source["location"] = str(inputs.find(location, "conditioning source", _present))
        if source.get("mask_folder"):
            source["mask_folder"] = str(
                inputs.find(str(source["mask_folder"]), "mask folder", Path.is_dir)
            )
        if isinstance(ref, str) and source.get("format") == "webdataset":
            ref = _shard_reference(str(source["location"]), ref)
    mask = params.get("mask")
    if isinstance(mask, dict) and "path" in mask:
        mask["path"] = str(inputs.find(str(mask["path"]), "mask image", _file_is(mask["sha256"])))
    adapter = params.get("ip_adapter")
    nets = [(n, "ControlNet folder", "ControlNet image") for n in params.get("controlnets") or []]
    if isinstance(adapter, dict):
        nets.insert(0, (adapter, "IP-Adapter folder", "image prompt"))
    for entry, folder, image_what in nets:  # a model folder and, maybe, its image
        entry["path"] = str(inputs.find(str(entry["path"]), folder, _folder_is(entry["sha256"])))
        image = entry.get("image")
        if isinstance(image, dict):
            image["path"] = str(
                inputs.find(str(image["path"]), image_what, _file_is(image["sha256"]))
            )
    return ref


def _find_pattern(pattern: str, inputs: Inputs) -> str:
    """A recorded shard pattern, local: where the build read it (its private state), as
    recorded when absolute, else in the folder of that name (or any of `inputs.dirs`) where
    it matches shards."""
    from synthgen.generators.sources.webdataset_source import expand_pattern

    here = [local for local, shown in inputs.places.items() if shown == pattern]
    if Path(pattern).expanduser().is_absolute():
        here.append(str(Path(pattern).expanduser()))
    for local in here:
        if expand_pattern(local):
            return local
    head, _, tail = pattern.rpartition("/")
    folder = inputs.find(
        head or ".",
        f"folder of the conditioning source {pattern!r}",
        lambda d: d.is_dir() and bool(expand_pattern(f"{d}/{tail}")),
    )
    return f"{folder}/{tail}"


def _shard_reference(location: str, ref: str) -> str:
    """A WebDataset reference (`shard.tar#key`, or an older absolute one) into the located
    source: the shard of that name among the pattern's matches."""
    from synthgen.generators.sources.webdataset_source import expand_pattern

    head, sep, key = ref.partition("#")
    if not sep or (Path(head).is_absolute() and Path(head).is_file()):
        return ref
    name = Path(head).name
    urls = [u for u in expand_pattern(location) if Path(u).name == name]
    return f"{Path(urls[0]).resolve()}#{key}" if len(urls) == 1 else ref


def find_provenance(build_dir: Path, key: str) -> dict[str, Any]:
    """The full provenance of `key` in a build directory: its Parquet row (rejected samples
    included) merged with the build constants in that file's `synthgen` metadata."""
    import pyarrow.parquet as pq

    # shard files only (`{shard:05d}.parquet`): not balanced.parquet, which also has keys
    files = sorted(p for p in build_dir.glob("*.parquet") if p.stem.isdigit())
    if not files:
        raise ProvenanceNotFound(f"{build_dir}: no Parquet shards")
    found: list[dict[str, Any]] = []
    for path in files:
        pf = pq.ParquetFile(path)
        names = [n for n in pf.schema_arrow.names if n != REJECT_IMAGE_FIELD.name]
        table = pq.read_table(path, columns=names, filters=[("key", "=", key)])
        if table.num_rows:
            constants = read_build_constants(pf.schema_arrow)
            for row in table.to_pylist():
                found.append(provenance_from_row(row, [], constants) | {"_file": path.name})
    if len(found) != 1:
        raise ProvenanceNotFound(f"{build_dir}: key {key!r} found {len(found)} times")
    prov = found[0]
    prov.pop("_file")
    return prov


def _restore_non_finite(cls: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON records a non-finite float as null: where the scheduler's own default is
    non-finite (e.g. `lambda_min_clipped = -inf`) and the record says null, use the default."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return config
    out = dict(config)
    for name, value in config.items():
        default = params[name].default if name in params else None
        if value is None and isinstance(default, float) and not math.isfinite(default):
            out[name] = default
    return out


def settings_from_provenance(prov: dict[str, Any]) -> GenerationSettings:
    from synthgen.generators.handler import GenerationSettings

    device, _, threads = str(prov["device"]).partition(":threads=")
    encoding = _loads(prov["image_encoding"])
    # Options beyond the classic ones; absent from older records (then: the defaults).
    options = _loads(prov.get("generation_options") or {}) or {}
    # A tampered record cannot ask for unbounded work: the recipe schema's own limits.
    check_provenance_bounds(prov)
    compute_batch, steps = int(prov["compute_batch"]), int(prov["steps"])
    return GenerationSettings(
        model_path=str(prov["model_path"]),
        pipeline_class=str(prov["pipeline_class"]),
        watermark=watermark_payload(str(prov["recipe_hash"])).hex(),
        scheduler=str(prov["scheduler"]),
        steps=steps,
        guidance_scale=float(prov["guidance_scale"]),
        height=int(prov["height"]),
        width=int(prov["width"]),
        dtype=str(prov["dtype"]),
        device=device,
        compute_batch=compute_batch,
        cpu_threads=int(threads) if threads else 1,
        image_format=str(encoding["format"]),
        png_compress_level=int(encoding["png_compress_level"]),
        quality=int(encoding["quality"]),
        variant=options.get("variant"),
        vae_slicing=bool(options.get("vae_slicing", False)),
        vae_tiling=bool(options.get("vae_tiling", False)),
        max_sequence_length=options.get("max_sequence_length"),
        timestep_spacing=options.get("timestep_spacing"),
        timesteps=tuple(int(t) for t in options["timesteps"]) if options.get("timesteps") else None,
        eta=options.get("eta"),
        num_frames=int(options["num_frames"]) if options.get("num_frames") else None,
        fps=int(options.get("fps") or DEFAULT_FPS),
        video_format=str(options.get("video_format") or DEFAULT_VIDEO_FORMAT),
        adapters=canonical_json(_loads(prov.get("adapters") or {}) or {}),
        conditioning=conditioning_from_provenance(prov),
    )


def _weights_are(sha256: str) -> Callable[[Path], bool]:
    """A CLIP folder holding a weights file with this sha256."""
    return lambda p: (
        p.is_dir() and any(file_sha256(w) == sha256 for w in sorted(p.glob("*.safetensors")))
    )


def with_recorded_guidance(
    settings: GenerationSettings, prov: dict[str, Any], inputs: Inputs, clip_loader: Any
) -> GenerationSettings:
    """`settings` with the feedback guidance the record names (its probe file, by sha256,
    and its CLIP folder, by its weights' sha256); unchanged for an unguided sample."""
    options = _loads(prov.get("generation_options") or {}) or {}
    g = options.get("guidance")
    if not g:
        return settings
    from synthgen.generators.guidance import FeedbackGuidance

    if clip_loader is None:
        raise ValueError("a guided sample: regenerate it with a clip_loader (synthgen regenerate)")
    probe = inputs.find(str(g["probe"]), "feedback probe", _file_is(str(g["probe_sha256"])))
    clip = inputs.find(str(g["clip"]), "CLIP model (guidance)", _weights_are(g["clip_sha256"]))
    guidance = FeedbackGuidance.from_file(
        probe, str(g["criterion"]), float(g["scale"]), int(g["every"]), g["probe_sha256"]
    )
    return dataclasses.replace(
        settings,
        guidance=guidance,
        guidance_probe=str(g["probe"]),
        guidance_clip=(str(clip), str(g["clip"]), str(g["clip_sha256"])),
        clip_loader=clip_loader,
    )


def regenerate(
    prov: dict[str, Any], inputs: Inputs | None = None, clip_loader: Any = None
) -> bytes:
    """The encoded image the provenance describes, from the same content: every input is
    found by `inputs` (default: relative to the current directory) and must have the
    recorded sha256 (InputNotFound names the one that has not). A sample of a guided
    feedback round also needs its probe file (found in the build) and the CLIP folder the
    guidance ran through, read by `clip_loader` (`validators.clip_folder.load_clip`).

    The sampler is rebuilt from the recorded effective scheduler config (class included),
    so `native` and named schedulers regenerate alike.
    """
    from synthgen.generators.model_folder import make_scheduler

    inputs = inputs if inputs is not None else Inputs(dirs=(Path.cwd(),))
    prov = localize(prov, inputs)
    settings = with_recorded_guidance(settings_from_provenance(prov), prov, inputs, clip_loader)
    model_path = Path(settings.model_path)  # found with the recorded sha256
    pipe = load_pipeline(
        model_path,
        "native",
        settings.dtype,
        settings.device,
        settings.cpu_threads,
        variant=settings.variant,
        vae_slicing=settings.vae_slicing,
        vae_tiling=settings.vae_tiling,
    )
    from synthgen.generators.adapters import apply_adapters

    pipe = apply_adapters(pipe, settings.adapters)  # each file's sha256 checked first
    import diffusers

    sched = dict(_loads(prov["scheduler_config"]))
    sched["_class_name"] = sched.pop("class")
    cls = getattr(diffusers, str(sched["_class_name"]), None)
    if cls is not None:
        sched = _restore_non_finite(cls, sched)
    pipe.scheduler = make_scheduler("native", sched)
    from synthgen.generators.handler import generate_batch

    return generate_batch(pipe, settings, [request_from_provenance(prov)])[0].image


def request_from_provenance(prov: dict[str, Any]) -> GenerationRequest:
    """The generation request a sample's record describes."""
    return GenerationRequest(
        key=str(prov["key"]),
        shard=int(prov["shard"]),
        index=int(prov["index"]),
        class_label=int(prov["class_label"]),
        class_name=str(prov["class_name"]),
        prompt=str(prov["prompt"]),
        negative_prompt=str(prov["negative_prompt"]),
        seed=int(prov["seed"]),
        # resolved per sample (templates, per-class settings); absent from older records
        prompt_template=prov.get("prompt_template"),
        prompt_slots=_slots_json(prov.get("prompt_slots")),
        sample_steps=_optional(int, prov.get("sample_steps")),
        sample_guidance_scale=_optional(float, prov.get("sample_guidance_scale")),
        # image conditioning: mode, source image (reference + sha256) and settings
        conditioning_mode=prov.get("conditioning_mode"),
        conditioning_source=prov.get("conditioning_source"),
        conditioning_source_sha256=prov.get("conditioning_source_sha256"),
        conditioning=_slots_json(prov.get("conditioning")),
    )
