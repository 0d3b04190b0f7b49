"""Peak RSS of a large build against a small one: the pipeline should stream.

    .venv/bin/python benchmarks/memory.py [--small 100] [--large 1000]

Each build runs in its own process (recipes/digits.yaml, DirectRunner in-process) and reports
its own peak resident set size; the target is large/small <= 1.2 for 10x the images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys, time
from pathlib import Path
from synthgen.pipelines.build import run_build
r = run_build(sys.argv[1], Path(sys.argv[2]), overrides=[f"count_per_class={sys.argv[3]}"],
              show_progress=False)
print(r.manifest.counts.planned, round(r.seconds, 1),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak(recipe: str, per_class: int) -> tuple[int, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, recipe, str(Path(tmp) / "out"), str(per_class)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        ).stdout.split()
    return int(out[-3]), float(out[-2]), int(out[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "digits.yaml"))
    parser.add_argument("--small", type=int, default=100, help="images per class")
    parser.add_argument("--large", type=int, default=1000, help="images per class")
    args = parser.parse_args()
    n1, t1, rss1 = peak(args.recipe, args.small)
    n2, t2, rss2 = peak(args.recipe, args.large)
    ratio = rss2 / rss1
    print(f"machine: {os.cpu_count()} CPU cores; recipe {Path(args.recipe).name}")
    print(f"{n1} images: {t1:.1f}s, peak RSS {rss1 / 1024:.0f} MiB")
    print(f"{n2} images: {t2:.1f}s, peak RSS {rss2 / 1024:.0f} MiB")
    print(f"peak RSS ratio {ratio:.3f} (target <= 1.2): {'met' if ratio <= 1.2 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
