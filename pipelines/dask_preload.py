"""A dask.distributed worker preload: a fresh worker imports and warms what synthgen's tasks
need before it takes its first one.

    dask worker tcp://scheduler:8786 --preload synthgen.pipelines.dask_preload
    LocalCluster(..., preload=["synthgen.pipelines.dask_preload"])

Without it, the first shards a fresh worker runs also pay for importing torch, diffusers,
transformers, open_clip and Beam's worker modules (seconds each, per worker process), so a
first build on a new cluster is slower than every later one. Importing this module does
nothing; dask calls `dask_setup` in the worker process before the worker joins the cluster.
Model weights are not loaded here: every build loads its own models once per worker, on
every runner, and is checked against the recipe when it does.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

# What a worker's tasks import: Beam's Dask evaluation and RunInference, the model stack, the
# scorers' stack, and synthgen's generating and scoring modules (which import the rest).
MODULES = (
    "apache_beam",
    "apache_beam.ml.inference.base",
    "apache_beam.runners.dask.overrides",
    "apache_beam.runners.dask.transform_evaluator",
    "torch",
    "safetensors.torch",
    "diffusers",
    "transformers",
    "open_clip",
    "imagehash",
    "PIL.Image",
    "synthgen.pipelines.runner",
    "synthgen.pipelines.transforms",
    "synthgen.pipelines.decide",
    "synthgen.generators.handler",
    "synthgen.generators.model_folder",
    "synthgen.generators.conditioning",
    "synthgen.validators.scoring",
    "synthgen.validators.clip_model",
    "synthgen.validators.clip_folder",
)


def _diffusers_classes() -> list[str]:
    """Every diffusers class synthgen can load: each family's pipeline and the pipelines
    derived from it, every sampler's scheduler, ControlNetModel. diffusers imports a class's
    module (and the transformers models it uses) only when the class is first looked up."""
    from synthgen.generators.conditioning import DERIVED_PIPELINES
    from synthgen.generators.families import FAMILIES, SCHEDULER_CLASSES

    names = set(FAMILIES) | {name for name, _ in SCHEDULER_CLASSES.values()}
    names |= {name for derived in DERIVED_PIPELINES.values() for name in derived.values()}
    names |= {"ControlNetModel", "UNet2DConditionModel", "AutoencoderKL"}
    return sorted(names)


def warm() -> dict[str, float]:
    """Import and initialise, in this process, what synthgen's worker tasks use; returns the
    seconds each step took. Nothing is computed that a build reads: only speed changes.

    1. the modules in MODULES
    2. diffusers' lazily imported classes (`_diffusers_classes`)
    3. the scorer plug-ins (each module under `synthgen.validators.scorers`)
    4. torch's CPU kernels, with one tiny convolution and matrix product
    5. the memory allocator set for model work (`runner.prepare_dask_worker`)
    """
    seconds: dict[str, float] = {}

    def step(name: str, start: float) -> None:
        seconds[name] = round(time.monotonic() - start, 3)

    start = time.monotonic()
    for module in MODULES:
        importlib.import_module(module)
    step("imports", start)

    start = time.monotonic()
    import diffusers

    for name in _diffusers_classes():
        getattr(diffusers, name)
    step("diffusers classes", start)

    start = time.monotonic()
    from synthgen.validators.scorers.base import scorer_classes

    scorer_classes()
    step("scorers", start)

    start = time.monotonic()
    import torch

    with torch.no_grad():
        x = torch.zeros(1, 4, 8, 8)
        torch.nn.functional.conv2d(x, torch.zeros(4, 4, 3, 3), padding=1)
        x.flatten(1) @ torch.zeros(256, 4)
    step("torch kernels", start)

    from synthgen.pipelines.runner import prepare_dask_worker

    start = time.monotonic()
    prepare_dask_worker()
    step("malloc", start)
    return seconds


def cold() -> list[str]:
    """What `warm` would still import or resolve in this process: the modules of MODULES not
    yet imported, then `diffusers.<Class>` for each class not yet looked up. Empty on a warm
    worker (`client.run(cold)` asks every worker); itself imports nothing."""
    missing = [m for m in MODULES if m not in sys.modules]
    diffusers = sys.modules.get("diffusers")
    loaded = vars(diffusers) if diffusers is not None else {}
    if not {"synthgen.generators.families", "synthgen.generators.conditioning"} <= set(sys.modules):
        return [*missing, "diffusers classes"]
    return missing + [f"diffusers.{n}" for n in _diffusers_classes() if n not in loaded]


def dask_setup(worker: Any) -> None:
    """dask.distributed's preload hook: warm this worker process before it joins."""
    start = time.monotonic()
    seconds = warm()
    logger.info(
        "worker %s warmed in %.1f s (%s)",
        getattr(worker, "name", "?"),
        time.monotonic() - start,
        ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
    )
