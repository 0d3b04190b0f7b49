"""What a build will do and cost, before it runs (`synthgen plan`).

`check_inputs` is the dry run: every check that needs no model library (model and CLIP
folders present, the device there, a balance source readable with its label column, and for
a balancing build the per-class deficit). It imports no torch, diffusers, Beam or open_clip,
so `plan` and `build` refuse bad input in well under two seconds.

How long a build will take, and its device time and price per 1,000 images, come from a
short calibration on this machine (`plan --estimate`).

The model and the scorers are loaded as a worker loads them; then calls of the recipe's
batch shape (`model.compute_batch`) are timed, the first one twice (a warm-up, not counted).
How the calls are chosen (`step_plan`), said in the output:

- per step: a call of S steps costs about `fixed + S * per_step` (text encoding and VAE
  decoding are the fixed part), measured with calls of 1 and 3 steps, when the sampler's
  step count is free and the recipe samples more steps than that;
- the recipe's own steps: each step count the recipe uses is timed directly, with no
  per-step figure scaled, for a model whose steps are fixed or few: explicit
  `sampling.timesteps`, a few-step family (SANA-Sprint, the LCM student), a few-step sampler
  (lcm, tcd, scm) up to FEW_STEPS steps, or a recipe of no more steps than the per-step
  calibration would run (a 1-step call has no per-step part to extrapolate).

The plan's calls are priced at their own steps (per-class steps included). Scoring is timed
on the calibration images. Nothing is written; image conditioning and adapters are used as
the build would use them.

Device time per 1,000 images counts the model calls (as `synthgen compare` does; scoring,
loading and start-up aside). Per 1,000 accepted images it divides by the acceptance the
recipe implies before a build (`expected_acceptance`): every image when no check rejects,
the validation floor `validation.min_accepted_fraction` as an upper bound; otherwise the
figure is per 1,000 generated, and says so. With a price per device-hour, the price per
1,000 is `device-seconds / 3600 * price`.

The figure is for one worker: a runner with N workers divides the generation part by up to
N. Start-up (imports, the gate, the report) is not included.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.pipelines.output import BuildError
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import BalanceSpec, Recipe, RecipeError, is_url, resolve_path

if TYPE_CHECKING:
    from synthgen.pipelines.resolve import ResolvedRecipe
    from synthgen.schemas.records import GenerationRequest

CALIBRATION_STEPS = (1, 3)  # the per-step calibration's two step counts
FEW_STEPS = 8  # a few-step sampler's recipe up to this many steps is timed at its own steps
PER_STEP = "per-step"  # a fixed part per call plus a part per step, from two step counts
RECIPE_STEPS = "recipe-steps"  # the recipe's own step counts, each timed directly


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
class StepPlan:
    """How the calibration times a call: `method` (PER_STEP or RECIPE_STEPS), the step
    counts it times (the first one also warms up, not counted) and why."""

    method: str
    steps: tuple[int, ...]
    reason: str


def planned_steps(recipe: Recipe) -> tuple[int, ...]:
    """Every step count the recipe's calls may use: sampling.steps and each class's own."""
    return tuple(sorted({recipe.sampling.steps, *(c.steps for c in recipe.classes if c.steps)}))


def step_plan(resolved: ResolvedRecipe) -> StepPlan:
    """Per step (calls of 1 and 3 steps, a line through them) where the sampler's step count
    is free and the recipe samples more steps than that; otherwise the recipe's own step
    counts, each timed directly: explicit timesteps fix the count, a few-step model or
    sampler has no per-step part worth extrapolating, and a few steps cost no more to time."""
    from synthgen.generators.families import FEW_STEP_SAMPLERS, family_for

    r = resolved.recipe
    counts = planned_steps(r)
    class_name = resolved.model.class_name if resolved.model else ""
    family = family_for(class_name)
    sampler = str((resolved.scheduler_config or {}).get("class") or r.sampling.scheduler)
    few_samplers = {"LCMScheduler", "TCDScheduler", "SCMScheduler", *FEW_STEP_SAMPLERS}
    if r.sampling.timesteps:
        reason = f"sampling.timesteps fix the call at {len(r.sampling.timesteps)} step(s)"
    elif family is not None and family.max_steps is not None:
        reason = f"{class_name} is a few-step model (1-{family.max_steps} steps)"
    elif sampler in few_samplers and counts[-1] <= FEW_STEPS:
        reason = f"{sampler} is a few-step sampler"
    elif counts[-1] <= CALIBRATION_STEPS[-1]:
        reason = f"{_steps(counts)}: no more than the per-step calibration would run"
    else:
        low, high = CALIBRATION_STEPS
        return StepPlan(PER_STEP, CALIBRATION_STEPS, f"calls of {low} and {high} steps")
    return StepPlan(RECIPE_STEPS, counts, reason)


def _steps(counts: Sequence[int]) -> str:
    return f"{'/'.join(str(n) for n in counts)} step(s)"


@dataclass(frozen=True)
class Calibration:
    """What one worker's calls cost on this machine."""

    device: str
    compute_batch: int
    load_seconds: float  # model + scorers, once per worker
    call_seconds: dict[int, float]  # a timed call of the recipe's batch shape, by its steps
    score_seconds_per_image: float
    method: str = PER_STEP
    reason: str = ""

    @property
    def call_fixed_seconds(self) -> float | None:
        """Per call (prompts encoded, latents decoded), from the per-step line; None when
        the recipe's own steps were timed."""
        if self.method != PER_STEP:
            return None
        (low, t_low), _ = sorted(self.call_seconds.items())[:2]
        return max(0.0, t_low - low * (self.step_seconds or 0.0))

    @property
    def step_seconds(self) -> float | None:
        """Per denoising step of one call, from the per-step line; None when the recipe's
        own steps were timed."""
        if self.method != PER_STEP:
            return None
        (low, t_low), (high, t_high) = sorted(self.call_seconds.items())[:2]
        return max(0.0, (t_high - t_low) / (high - low))

    def call_cost(self, steps: int) -> float:
        """Seconds of one call of `steps` steps: measured, or on the per-step line."""
        if self.method == PER_STEP:
            return (self.call_fixed_seconds or 0.0) + steps * (self.step_seconds or 0.0)
        if steps not in self.call_seconds:
            raise ValueError(f"no calibrated call of {steps} steps (timed: {self.timed()})")
        return self.call_seconds[steps]

    def timed(self) -> str:
        return ", ".join(f"{n} step(s) {t:.3f} s" for n, t in sorted(self.call_seconds.items()))

    def method_line(self) -> str:
        """Which calibration method priced the calls, and why."""
        scoring = f"scoring {1000 * self.score_seconds_per_image:.1f} ms per image"
        if self.method == PER_STEP:
            return (
                f"  method: per step ({self.reason}): a call costs {self.call_fixed_seconds:.2f} s"
                f" + {self.step_seconds:.3f} s per step; {scoring}"
            )
        return (
            f"  method: the recipe's own steps timed directly, no per-step figure scaled "
            f"({self.reason}): a call of {self.timed()}; {scoring}"
        )

    def figures(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "method_reason": self.reason,
            "call_seconds_by_steps": {str(n): t for n, t in sorted(self.call_seconds.items())},
            "call_fixed_seconds": self.call_fixed_seconds,
            "step_seconds": self.step_seconds,
            "score_seconds_per_image": self.score_seconds_per_image,
            "load_seconds": self.load_seconds,
        }


@dataclass(frozen=True)
class Acceptance:
    """The share of generated images a build is expected to accept, and on what basis;
    `rate` None when it is unknown before a build."""

    rate: float | None
    basis: str
    at_most: bool = False  # a floor's rate: the per-accepted figures are upper bounds


def expected_acceptance(resolved: ResolvedRecipe) -> Acceptance:
    """What the recipe says about acceptance before any image is made: every image when no
    check can reject one, the lowest rate validation passes (`validation.
    min_accepted_fraction`) as a bound, else unknown (a build measures it)."""
    from synthgen.validators.build_checks import recipe_checks

    r = resolved.recipe
    checks, build_checks = recipe_checks(r, resolved.score_columns)
    names = sorted({c.name for c in checks} | {b.name for b in build_checks})
    if not names:
        return Acceptance(1.0, "every image accepted: the recipe has no check that rejects")
    floor = r.validation.min_accepted_fraction
    if floor > 0:
        return Acceptance(
            floor,
            f"acceptance at its floor, validation.min_accepted_fraction {floor:g}",
            at_most=True,
        )
    return Acceptance(
        None, f"acceptance is unknown before a build: checks {', '.join(names)} can reject"
    )


def check_price(price_per_hour: float | None, estimate: bool) -> None:
    """`--price-per-hour`: a finite price of at least 0, and only with `--estimate`."""
    if price_per_hour is None:
        return
    if not math.isfinite(price_per_hour) or price_per_hour < 0:
        raise RecipeError(f"--price-per-hour: must be a number of at least 0, got {price_per_hour}")
    if not estimate:
        raise RecipeError("--price-per-hour: prices the calibration; add --estimate")


@dataclass(frozen=True)
class PerThousand:
    """Device-seconds (model calls; scoring, loading and start-up aside) and their price,
    per 1,000 generated and per 1,000 accepted images."""

    device_seconds_per_image: float
    acceptance: Acceptance
    price_per_hour: float | None = None

    @property
    def generated(self) -> float:
        return 1000 * self.device_seconds_per_image

    @property
    def accepted(self) -> float | None:
        rate = self.acceptance.rate
        return self.generated / rate if rate else None

    def price(self, device_seconds: float | None) -> float | None:
        if device_seconds is None or self.price_per_hour is None:
            return None
        return device_seconds / 3600 * self.price_per_hour

    def lines(self) -> list[str]:
        a, generated, accepted = self.acceptance, self.generated, self.accepted
        if accepted is None:
            lines = [
                f"  device time (model calls): {generated:.1f} device-s per 1,000 generated "
                f"images ({a.basis}; per 1,000 accepted divide by the build's acceptance rate)"
            ]
            priced = f"{self.price(generated) or 0:.4f} per 1,000 generated images"
        else:
            bound = "at most " if a.at_most else ""
            lines = [
                f"  device time (model calls): {bound}{accepted:.1f} device-s per 1,000 "
                f"accepted images ({a.basis}); {generated:.1f} per 1,000 generated"
            ]
            priced = (
                f"{bound}{self.price(accepted) or 0:.4f} per 1,000 accepted images; "
                f"{self.price(generated) or 0:.4f} per 1,000 generated"
            )
        if self.price_per_hour is not None:
            lines.append(f"  price at {self.price_per_hour:g} per device-hour: {priced}")
        return lines

    def figures(self) -> dict[str, Any]:
        a = self.acceptance
        return {
            "device_seconds_per_1k_generated": self.generated,
            "device_seconds_per_1k_accepted": self.accepted,
            "acceptance_rate": a.rate,
            "acceptance_basis": a.basis,
            "acceptance_at_most": a.at_most,
            "price_per_hour": self.price_per_hour,
            "price_per_1k_generated": self.price(self.generated),
            "price_per_1k_accepted": self.price(self.accepted),
        }


@dataclass(frozen=True)
class Estimate:
    """A calibration priced over a plan's calls."""

    calibration: Calibration
    calls: int  # generation calls of the plan (fixed-shape, padded)
    images: int
    generate_seconds: float
    score_seconds: float
    acceptance: Acceptance = Acceptance(None, "not given")
    price_per_hour: float | None = None

    @property
    def total_seconds(self) -> float:
        return self.calibration.load_seconds + self.generate_seconds + self.score_seconds

    @property
    def per_thousand(self) -> PerThousand:
        per_image = self.generate_seconds / self.images if self.images else 0.0
        return PerThousand(per_image, self.acceptance, self.price_per_hour)

    def lines(self) -> list[str]:
        c = self.calibration
        return [
            f"estimated time on {c.device} (one worker; start-up, gate and report aside): "
            f"{_duration(self.total_seconds)}",
            f"  {self.images} images in {self.calls} call(s) of {c.compute_batch}: "
            f"{_duration(self.generate_seconds)} generating, {_duration(self.score_seconds)} "
            f"scoring, {_duration(c.load_seconds)} loading models",
            c.method_line(),
            *self.per_thousand.lines(),
        ]

    def figures(self) -> dict[str, Any]:
        return {
            "device": self.calibration.device,
            "calls": self.calls,
            "images": self.images,
            "generate_seconds": self.generate_seconds,
            "score_seconds": self.score_seconds,
            "total_seconds": self.total_seconds,
            **self.calibration.figures(),
            **self.per_thousand.figures(),
        }


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def calibrate(resolved: ResolvedRecipe) -> Calibration:
    """Load the model and scorers as a worker does, time calls of the recipe's batch shape
    at the step counts `step_plan` chooses (the first one twice: a warm-up, not counted) and
    the scoring of their images."""
    from synthgen.generators.handler import DiffusersHandler, generate_batch
    from synthgen.pipelines.resolve import generation_settings
    from synthgen.validators.scoring import ScoreSamples, score_samples

    r = resolved.recipe
    chosen = step_plan(resolved)
    requests = _calibration_requests(r)
    settings = generation_settings(resolved)
    start = time.perf_counter()
    pipe = DiffusersHandler(settings, batch_size=r.batch_size).load_model()
    loaded = ScoreSamples(
        list(resolved.scorers), r.model.device, r.model.cpu_threads, frames=r.scoring.frames
    ).load_model()
    load = time.perf_counter() - start
    seconds: dict[int, float] = {}
    samples = []
    for steps in (chosen.steps[0], *chosen.steps):  # the first is a warm-up
        t = time.perf_counter()
        samples = generate_batch(pipe, dataclasses.replace(settings, steps=steps), requests)
        seconds[steps] = time.perf_counter() - t
    ok = [s for s in samples if s.image]
    t = time.perf_counter()
    if ok:
        score_samples(loaded, ok)
    return Calibration(
        device=r.model.device,
        compute_batch=r.model.compute_batch,
        load_seconds=load,
        call_seconds=seconds,
        score_seconds_per_image=(time.perf_counter() - t) / max(1, len(ok)),
        method=chosen.method,
        reason=chosen.reason,
    )


def _calibration_requests(r: Recipe) -> list[GenerationRequest]:
    """One call's worth of the plan's first requests, at the calibration's steps and the
    recipe's guidance; a balancing build's counts come from its source, so it calibrates on
    a batch of each class."""
    from synthgen.generators.planning import plan_shard, shard_ids

    counts = None if r.balance is None else {c.id: r.model.compute_batch for c in r.classes}
    shards = shard_ids(r, counts)
    first = plan_shard(r, shards[0], counts) if shards else []
    requests = [
        dataclasses.replace(q, sample_steps=None, sample_guidance_scale=None)
        for q in first[: r.model.compute_batch]
    ]
    if not requests:
        raise ValueError("the plan has no samples to calibrate on")
    return requests


def price(
    c: Calibration,
    resolved: ResolvedRecipe,
    requests: Sequence[GenerationRequest],
    price_per_hour: float | None = None,
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
                generate += c.call_cost(call.steps)
    scoring = len(requests) * c.score_seconds_per_image
    acceptance = expected_acceptance(resolved)
    return Estimate(c, calls, len(requests), generate, scoring, acceptance, price_per_hour)


def plan_estimate(
    recipe: Recipe, base_dir: Path, price_per_hour: float | None = None
) -> tuple[list[str], dict[str, Any]]:
    """`plan --estimate`: the calibration's lines and figures for a plan; a balancing
    build (its source decides the counts) is priced per synthetic image."""
    from synthgen.generators.planning import plan
    from synthgen.pipelines.resolve import resolve

    resolved = resolve(recipe, base_dir)
    c = calibrate(resolved)
    if recipe.balance is None:
        est = price(c, resolved, list(plan(recipe)), price_per_hour)
        return est.lines(), est.figures()
    steps = recipe.sampling.steps
    per_call = c.call_cost(steps)
    per_image = per_call / c.compute_batch + c.score_seconds_per_image
    thousand = PerThousand(
        per_call / c.compute_batch, expected_acceptance(resolved), price_per_hour
    )
    lines = [
        f"estimated time on {c.device} (one worker): {per_image:.3f} s per synthetic image "
        f"(calls of {c.compute_batch} at {steps} steps: {per_call:.2f} s; "
        f"{c.load_seconds:.1f} s loading models)",
        c.method_line(),
        *thousand.lines(),
    ]
    figures = {"device": c.device, "seconds_per_image": per_image, **c.figures()}
    return lines, figures | thousand.figures()
