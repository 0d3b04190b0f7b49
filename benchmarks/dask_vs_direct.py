"""DaskRunner vs DirectRunner on the same recipe: wall time and how often each image is made.

    .venv/bin/python benchmarks/dask_vs_direct.py [--count-per-class 50] [--workers 2]

Starts a loopback dask.distributed cluster (N one-thread worker processes, 127.0.0.1 only),
builds the default digits recipe once on each runner (Direct first, then Dask, then Direct
again; the median Direct time is used), and prints wall times, their ratio, and the number
of images generated per planned sample on Dask (from the workers' progress marks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.pipelines.build import run_build
from synthgen.pipelines.progress import count_progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count-per-class", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from dask.distributed import LocalCluster

    recipe = ROOT / "recipes" / "digits.yaml"
    overrides = [f"count_per_class={args.count_per_class}"]
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    direct: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, runner in enumerate(("direct", "dask", "direct")):
                out = Path(tmp) / f"{runner}-{i}"
                beam_args = (
                    ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
                    if runner == "dask"
                    else []
                )
                start = time.monotonic()
                result = run_build(
                    recipe, out, overrides=overrides, beam_args=beam_args, show_progress=False
                )
                seconds = time.monotonic() - start
                planned = result.manifest.counts.planned
                generated, _, _ = count_progress(out / ".synthgen" / "progress")
                print(
                    f"{runner:6s} {seconds:6.1f} s  planned {planned}  generated {generated} "
                    f"({generated / planned:.2f} per planned sample)"
                )
                if runner == "direct":
                    direct.append(seconds)
                else:
                    dask_seconds = seconds
    finally:
        cluster.close()
    base = statistics.median(direct)
    print(
        f"machine: {os.cpu_count()} CPU cores; Dask ({args.workers} one-thread workers) / "
        f"Direct wall time: {dask_seconds / base:.2f}"
    )


if __name__ == "__main__":
    main()
