"""Pipeline overhead: steady-state images/s of the full build / a bare diffusers loop.

    .venv/bin/python benchmarks/overhead.py [--small 20] [--large 80] [--repeats 2]

Both sides use the same model, scheduler, steps, guidance, resolution, batch size and threads.
The bare loop calls the pipeline on batches of prompts with per-image generators and stops at
float images. The full build (DirectRunner, in-process) also encodes PNGs, scores with CLIP,
measures and checks every image, writes shards, validates and reports. Its steady-state rate is
the difference of two build sizes, (N_large - N_small) / (t_large - t_small), so start-up and
model loading cancel out. Measurements alternate in one run; medians are printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.generators.model_folder import load_pipeline
from synthgen.generators.planning import plan
from synthgen.pipelines.build import run_build
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.schemas.recipe import load_recipe


def bare_loop(recipe_path: Path, per_class: int) -> float:
    import torch

    recipe, base = load_recipe(recipe_path, [f"count_per_class={per_class}"])
    s = generation_settings(resolve(recipe, base))
    pipe = load_pipeline(Path(s.model_path), s.scheduler, s.dtype, s.device, s.cpu_threads)
    requests = plan(recipe)
    t0 = time.perf_counter()
    for i in range(0, len(requests), s.compute_batch):
        chunk = requests[i : i + s.compute_batch]
        with torch.inference_mode():
            pipe(
                prompt=[r.prompt for r in chunk],
                negative_prompt=[r.negative_prompt for r in chunk],
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
                height=s.height,
                width=s.width,
                generator=[torch.Generator("cpu").manual_seed(r.seed) for r in chunk],
                output_type="np",
            )
    return len(requests) / (time.perf_counter() - t0)


def build_seconds(recipe_path: Path, per_class: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        r = run_build(
            recipe_path,
            Path(tmp) / "out",
            overrides=[f"count_per_class={per_class}"],
            show_progress=False,
        )
    return r.manifest.counts.planned, r.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "digits.yaml"))
    parser.add_argument("--small", type=int, default=20, help="images per class, small build")
    parser.add_argument("--large", type=int, default=80, help="images per class, large build")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    recipe = Path(args.recipe)
    bare, pipe = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(recipe, args.large))
        n_small, t_small = build_seconds(recipe, args.small)
        n_large, t_large = build_seconds(recipe, args.large)
        pipe.append((n_large - n_small) / (t_large - t_small))
        print(
            f"bare {bare[-1]:.2f} img/s | pipeline steady state {pipe[-1]:.2f} img/s "
            f"({n_small} in {t_small:.1f}s, {n_large} in {t_large:.1f}s)"
        )
    ratio = statistics.median(pipe) / statistics.median(bare)
    print(f"machine: {os.cpu_count()} CPU cores; recipe {recipe.name}")
    print(
        f"median bare loop {statistics.median(bare):.2f} img/s, "
        f"median pipeline {statistics.median(pipe):.2f} img/s"
    )
    print(
        f"overhead ratio pipeline / bare = {ratio:.3f} (target >= 0.90): "
        f"{'met' if ratio >= 0.90 else 'NOT MET'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
