"""How long a build will take, from a short calibration on this machine (`plan --estimate`).

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
import time
from collections.abc import Sequence
from dataclasses import dataclass

from synthgen.pipelines.resolve import ResolvedRecipe, generation_settings
from synthgen.schemas.records import GenerationRequest

CALIBRATION_STEPS = (1, 3)


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
