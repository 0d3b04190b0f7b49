"""Cost of the metrics and memorization features as a fraction of build wall time.

    .venv/bin/python benchmarks/metrics.py [--per-class 100] [--small 20] [--repeats 2]

The same recipe (`recipes/digits.yaml`) is built with the features on and off, alternating:

- on: the `clip_embedding` scorer (stored embeddings), the `reference` (1,347 real digits)
  with the nearest-reference lookup and `near_copy`, the same set as an `eval_set` with
  `contaminated`, `semantic_duplicate` within each class, the metrics (FID, KID, precision,
  recall, density, coverage, Vendi, pairwise distances) with a `precision` gate, and their
  report sections;
- off: none of them (CLIP score and image statistics only, the same other checks).

Each size is built on and off; the printed fraction is (t_on - t_off) / t_on per size, and
the steady-state (marginal) fraction from the difference of two sizes, where start-up and
the one-off reference embedding cancel out. The reference embedding runs once per machine
(shared cache, `SYNTHGEN_CACHE_DIR`): the first `on` build here runs it with a cold cache,
later ones reuse it; both are shown.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml

from synthgen.pipelines.build import run_build

RECIPE = ROOT / "recipes" / "digits.yaml"


def recipes() -> tuple[dict[str, Any], dict[str, Any]]:
    """(features on, features off) recipe dicts with absolute paths."""
    base = yaml.safe_load(RECIPE.read_text())
    here = RECIPE.parent
    base["model"]["path"] = str((here / base["model"]["path"]).resolve())
    base["scoring"]["clip_model"] = str((here / base["scoring"]["clip_model"]).resolve())
    base["reference"]["source"] = str((here / base["reference"]["source"]).resolve())
    on = copy.deepcopy(base)
    on["eval_set"] = dict(on["reference"])
    on["checks"]["contaminated"] = {"min_similarity": 0.999}
    on["checks"]["semantic_duplicate"] = {"min_similarity": 0.995}
    off = copy.deepcopy(base)
    off["scoring"]["scorers"] = [
        s for s in off["scoring"]["scorers"] if s["name"] != "clip_embedding"
    ]
    off.pop("reference")
    off["checks"].pop("near_copy")
    off["validation"].pop("metrics")
    return on, off


def build_seconds(data: dict[str, Any], per_class: int) -> tuple[int, float]:
    data = {**data, "count_per_class": per_class}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = run_build(data, Path(tmp) / "out", show_progress=False)
        seconds = time.perf_counter() - t0
    return r.manifest.counts.planned, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="images per class, large")
    parser.add_argument("--small", type=int, default=20, help="images per class, small")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    on, off = recipes()
    cache = tempfile.mkdtemp(prefix="synthgen-bench-cache-")
    os.environ["SYNTHGEN_CACHE_DIR"] = cache  # cold for the first `on` build only
    t: dict[tuple[str, int], list[float]] = {}
    n: dict[int, int] = {}
    cold = None
    for rep in range(args.repeats):
        for size in (args.small, args.per_class):
            for name, data in (
                (("on", on), ("off", off)) if rep % 2 == 0 else (("off", off), ("on", on))
            ):
                planned, seconds = build_seconds(data, size)
                n[size] = planned
                if name == "on" and cold is None:
                    cold = (planned, seconds)
                    print(f"on  {planned:6d} samples: {seconds:7.1f} s (cold reference cache)")
                    planned, seconds = build_seconds(data, size)
                t.setdefault((name, size), []).append(seconds)
                print(f"{name:3s} {planned:6d} samples: {seconds:7.1f} s")
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"machine: {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}")
    for size in (args.small, args.per_class):
        t_on, t_off = med[("on", size)], med[("off", size)]
        print(
            f"{n[size]:6d} samples: on {t_on:.1f} s, off {t_off:.1f} s, "
            f"features = {(t_on - t_off) / t_on:.1%} of the build's wall time"
        )
    d_on = med[("on", args.per_class)] - med[("on", args.small)]
    d_off = med[("off", args.per_class)] - med[("off", args.small)]
    dn = n[args.per_class] - n[args.small]
    print(
        f"steady state: on {1000 * d_on / dn:.1f} ms/sample, off {1000 * d_off / dn:.1f} "
        f"ms/sample: features = {(d_on - d_off) / d_on:.1%} of the marginal wall time"
    )
    if cold is not None:
        print(f"cold reference cache: {cold[0]} samples in {cold[1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
