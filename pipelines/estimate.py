"""What a build will do and cost, before it runs (`synthgen plan`).

`check_inputs` is the dry run: every check that needs no model library (model and CLIP
folders present, the device there, a balance source readable with its label column, and for
a balancing build the per-class deficit). It imports no torch, diffusers, Beam or open_clip,
so `plan` and `build` refuse bad input in well under two seconds.

How long a build will take comes from a short calibration on this machine (`plan --estimate`).

The model and the scorers are loaded as a worker loads them; then one call of the recipe's
batch shape (`model.compute_batch`) runs three times: a warm-up of 1 step (not counted),
1 step and 3 steps, timed. A call of S steps costs about `fixed + S * per_step` (text
encoding and VAE decoding are the fixed part), so the plan's calls are priced at their own
steps (per-class steps included). Scoring is timed on the calibration images. Nothing is
written; image conditioning and adapters are used as the build would use them.

The figure is for one worker: a runner with N workers divides the generation part by up to
N. Start-up (imports, the gate, the report) is not included.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from synthgen.pipelines.output import BuildError
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import BalanceSpec, Recipe, RecipeError, is_url, resolve_path

if TYPE_CHECKING:
    from synthgen.pipelines.resolve import ResolvedRecipe
    from synthgen.schemas.records import GenerationRequest

CALIBRATION_STEPS = (1, 3)


@dataclass(frozen=True)
class Deficit:
    """A balancing build's counts by class name: in the source, wanted, to generate."""

    before: dict[str, int]
    target: dict[str, int]

    @property
    def missing(self) -> dict[str, int]:
        return {c: max(0, self.target[c] - n) for c, n in self.before.items()}

    @property
    def total(self) -> int:
        return sum(self.missing.values())


def targets_for(spec: BalanceSpec, recipe: Recipe, before: dict[int, int]) -> dict[int, int]:
    """Total (real + synthetic) count wanted per class id."""
    if spec.target == "max":
        top = max(before.values())
        return {c: top for c in before}
    if isinstance(spec.target, int):
        return {c: spec.target for c in before}
    by_name = {c.name: c.id for c in recipe.classes}
    out = dict(before)  # classes the mapping leaves out are not topped up
    for name, count in spec.target.items():
        class_id = by_name.get(name)
        if class_id is None:
            raise BuildError(f"balance.target: {name!r} is not one of the recipe's classes")
        out[class_id] = count
    return out


def check_inputs(recipe: Recipe, base_dir: Path, *, count_source: bool = False) -> Deficit | None:
    """The dry run: every check of the recipe's inputs that needs no model library.

    1. the model folder is a diffusers folder (`model_index.json`), the CLIP folder is there
    2. the device exists: `cuda` on a machine without a usable GPU is refused by name
    3. a local balance source opens and its first record reads (label and image columns);
       with `count_source`, it is read whole: the per-class deficit is returned

    Raises ModelFolderError, RecipeError or BuildError (a source's error) naming the input.
    The full checks (safetensors headers, shapes, scheduler, scorers) follow in `resolve`;
    an object-store source is checked there.
    """
    model = resolve_path(base_dir, recipe.model.path)
    if not model.is_dir():
        raise ModelFolderError(f"{model}: model folder not found")
    if not (model / "model_index.json").is_file():
        raise ModelFolderError(f"{model}: not a diffusers pipeline folder (no model_index.json)")
    clip = resolve_path(base_dir, recipe.scoring.clip_model)
    if not clip.is_dir():
        raise ModelFolderError(f"{clip}: CLIP model folder not found (scoring.clip_model)")
    reason = device_missing(recipe.model.device)
    if reason is not None:
        raise RecipeError(f"model.device: {recipe.model.device!r}: {reason}; set model.device=cpu")
    if recipe.balance is None or is_url(recipe.balance.source):
        return None
    return _check_source(recipe, recipe.balance, base_dir, count_source)


def _check_source(recipe: Recipe, spec: BalanceSpec, base_dir: Path, count: bool) -> Deficit | None:
    from synthgen.generators.sources.base import PixelLimit, SourceError
    from synthgen.generators.sources.open import SourceOptions, open_source, read_histogram

    raw = spec.source  # located as pipelines.remote.source_location locates a local one
    if any(c in raw for c in "{*?["):  # a shard pattern
        where = raw if Path(raw).is_absolute() else str(base_dir / raw)
    else:
        where = str(resolve_path(base_dir, raw))
    try:
        s = recipe.sampling  # images declaring far more pixels are refused undecoded
        source = open_source(where, SourceOptions.of(spec), PixelLimit(s.width, s.height))
        if not count:
            next(iter(source.records()), None)  # the columns and the first image
            return None
        before = read_histogram(source, recipe)
    except SourceError as exc:
        raise BuildError(f"balance.source: {exc}") from None
    names = {c.id: c.name for c in recipe.classes}
    target = targets_for(spec, recipe, before)
    return Deficit(
        before={names[c]: n for c, n in sorted(before.items())},
        target={names[c]: target[c] for c in sorted(before)},
    )


def device_missing(device: str) -> str | None:
    """Why `device` cannot be used on this machine, told without importing torch; or None.

    Only `cuda` is checked: a torch built without CUDA, `CUDA_VISIBLE_DEVICES` hiding every
    GPU, or (on Linux) no NVIDIA device node. The model load remains the final word.
    """
    if not device.startswith("cuda"):
        return None
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    spec = importlib.util.find_spec("torch")
    origin = spec.origin if spec is not None else None
    if origin is not None:
        try:
            text = (Path(origin).parent / "version.py").read_text(encoding="utf-8")
        except OSError:
            text = ""
        if re.search(r"^cuda\b[^=\n]*=\s*None\s*$", text, re.MULTILINE):
            return "this torch is built without CUDA"
    if sys.platform == "linux" and not glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/dxg"):
        return "this machine has no NVIDIA GPU (no /dev/nvidia* device)"
    return None


@dataclass(frozen=True)
class Calibration:
    """What one worker's calls cost on this machine."""

    device: str
    compute_batch: int
    load_seconds: float  # model + scorers, once per worker
    call_fixed_seconds: float  # per call: prompts encoded, latents decoded
    step_seconds: float  # per denoising step of one call
    score_seconds_per_image: float


@dataclass(frozen=True)
class Estimate:
    """A calibration priced over a plan's calls."""

    calibration: Calibration
    calls: int  # generation calls of the plan (fixed-shape, padded)
    images: int
    generate_seconds: float
    score_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.calibration.load_seconds + self.generate_seconds + self.score_seconds

    def lines(self) -> list[str]:
        c = self.calibration
        return [
            f"estimated time on {c.device} (one worker; start-up, gate and report aside): "
            f"{_duration(self.total_seconds)}",
            f"  {self.images} images in {self.calls} call(s) of {c.compute_batch}: "
            f"{_duration(self.generate_seconds)} generating, {_duration(self.score_seconds)} "
            f"scoring, {_duration(c.load_seconds)} loading models",
            f"  calibrated: a call costs {c.call_fixed_seconds:.2f} s + {c.step_seconds:.3f} s "
            f"per step; scoring {1000 * c.score_seconds_per_image:.1f} ms per image",
        ]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def calibrate(resolved: ResolvedRecipe) -> Calibration:
    """Load the model and scorers as a worker does, time three calls of the recipe's batch
    shape (a 1-step warm-up, then 1 and 3 steps) and the scoring of their images."""
    from synthgen.generators.handler import DiffusersHandler, generate_batch
    from synthgen.generators.planning import plan_shard, shard_ids
    from synthgen.pipelines.resolve import generation_settings
    from synthgen.validators.scoring import ScoreSamples, score_samples

    r = resolved.recipe
    settings = generation_settings(resolved)
    start = time.perf_counter()
    pipe = DiffusersHandler(settings, batch_size=r.batch_size).load_model()
    loaded = ScoreSamples(list(resolved.scorers), r.model.device, r.model.cpu_threads).load_model()
    load = time.perf_counter() - start
    # a balancing build's counts come from its source: calibrate on a batch of each class
    counts = None if r.balance is None else {c.id: r.model.compute_batch for c in r.classes}
    shards = shard_ids(r, counts)
    first = plan_shard(r, shards[0], counts) if shards else []
    requests = [
        dataclasses.replace(q, sample_steps=None, sample_guidance_scale=None)
        for q in first[: r.model.compute_batch]
    ]
    if not requests:
        raise ValueError("the plan has no samples to calibrate on")
    seconds: dict[int, float] = {}
    samples = []
    for steps in (CALIBRATION_STEPS[0], *CALIBRATION_STEPS):  # the first is a warm-up
        t = time.perf_counter()
        samples = generate_batch(pipe, dataclasses.replace(settings, steps=steps), requests)
        seconds[steps] = time.perf_counter() - t
    low, high = CALIBRATION_STEPS
    per_step = max(0.0, (seconds[high] - seconds[low]) / (high - low))
    ok = [s for s in samples if s.image]
    t = time.perf_counter()
    if ok:
        score_samples(loaded, ok)
    return Calibration(
        device=r.model.device,
        compute_batch=r.model.compute_batch,
        load_seconds=load,
        call_fixed_seconds=max(0.0, seconds[low] - low * per_step),
        step_seconds=per_step,
        score_seconds_per_image=(time.perf_counter() - t) / max(1, len(ok)),
    )


def price(
    c: Calibration, resolved: ResolvedRecipe, requests: Sequence[GenerationRequest]
) -> Estimate:
    """The plan's calls as the build makes them (batches of `batch_size` by position within
    a shard, cut into fixed-shape calls per steps / guidance / LoRA), each priced at its own
    steps. Image-conditioning groups can split a batch further: not counted."""
    from synthgen.generators.adapters import call_chunks

    r = resolved.recipe
    by_shard: dict[int, list[GenerationRequest]] = {}
    for q in requests:
        by_shard.setdefault(q.shard, []).append(q)
    calls = 0
    generate = 0.0
    for shard in by_shard.values():
        for i in range(0, len(shard), r.batch_size):
            for _, _, call in call_chunks(
                shard[i : i + r.batch_size],
                r.sampling.steps,
                r.sampling.guidance_scale,
                resolved.adapters,
                c.compute_batch,
            ):
                calls += 1
                generate += c.call_fixed_seconds + call.steps * c.step_seconds
    return Estimate(c, calls, len(requests), generate, len(requests) * c.score_seconds_per_image)
