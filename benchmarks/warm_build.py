"""The fixed cost of a build in a process that has already built once (a scheduled-build
service, a notebook, the test suite): a tiny 12-image recipe built N times in one process.

    .venv/bin/python benchmarks/warm_build.py [--builds 6]

Prints the mean wall seconds per build after a first, discarded one, and the corpus gate
(great_expectations over the finished build's Parquet rows) alone, the median of 5.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=6)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from synthgen.generators.clip_layout import make_random_clip
    from synthgen.generators.sd_layout import make_random_pipeline
    from synthgen.pipelines.build import run_build
    from synthgen.schemas.manifest import Manifest
    from synthgen.schemas.recipe import load_recipe
    from synthgen.validators.corpus import gate_corpus
    from tests.conftest import TINY_CLIP, TINY_SD, tiny_recipe_dict, write_recipe

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_random_pipeline(root / "m" / "sd", TINY_SD, seed=0)
        make_random_clip(root / "m" / "clip", name="tiny-clip", config=TINY_CLIP, seed=0)
        recipe = write_recipe(root / "r.yaml", tiny_recipe_dict(root / "m"))
        first = run_build(recipe, root / "o0", show_progress=False).output
        start = time.perf_counter()
        for i in range(1, args.builds + 1):
            run_build(recipe, root / f"o{i}", show_progress=False)
        per_build = (time.perf_counter() - start) / args.builds
        manifest = Manifest.model_validate_json((first / "manifest.json").read_text())
        loaded = load_recipe(recipe)[0]
        gates = []
        for _ in range(5):
            t = time.perf_counter()
            gate_corpus(first, manifest, loaded)
            gates.append(time.perf_counter() - t)
    print(f"warm tiny build (12 images, 3 shards): {per_build:.2f} s per build")
    print(f"corpus gate alone: {statistics.median(gates):.3f} s")


if __name__ == "__main__":
    main()
