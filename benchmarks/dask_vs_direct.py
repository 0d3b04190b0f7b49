"""DaskRunner vs DirectRunner on the same recipe: wall time, cold and warm, and how often each
image is made.

    .venv/bin/python benchmarks/dask_vs_direct.py [--count-per-class 50] [--workers 2]
        [--warm-pairs 2] [--dask-first] [--preload]

Starts a loopback dask.distributed cluster (N one-thread worker processes, 127.0.0.1 only,
dask's default worker settings; `--preload`: each worker runs synthgen.pipelines.dask_preload
before it joins, and the cold pair's Dask build is reported as `cold+preload`) and builds the
default digits recipe in this process:

1. the cold pair: Direct then Dask (`--dask-first`: Dask then Direct). Direct's first build
   pays this process's imports and model loads; Dask's first build pays them in each fresh
   worker (the driver's side of a build is warm for whichever runner goes second)
2. `--warm-pairs` pairs Direct, Dask, alternating: every process has imported everything
   (each build still loads its models once, on every runner)

Prints the cluster's start time (with `--preload` it includes warming the workers), each
build's wall time, images generated per planned sample (from the workers' progress marks)
and, on Dask, per worker process; then the Dask / Direct ratio of the cold pair and of the
warm medians, with the load average (other work on the machine counts).
"""

from __future__ import annotations

import argparse
import collections
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


def generated_by_process(progress: Path) -> dict[str, int]:
    """Images generated per worker process: progress files are named `<pid>-<id>.log`."""
    counts: collections.Counter[str] = collections.Counter()
    for p in progress.glob("*.log"):
        counts[p.name.split("-")[0]] += p.read_text(encoding="ascii").count("G")
    return {pid: n for pid, n in counts.items() if n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count-per-class", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-pairs", type=int, default=2)
    parser.add_argument("--dask-first", action="store_true", help="cold pair: Dask first")
    parser.add_argument(
        "--preload",
        action="store_true",
        help="start the workers with synthgen.pipelines.dask_preload (warm before joining)",
    )
    args = parser.parse_args()
    from dask.distributed import LocalCluster

    recipe = ROOT / "recipes" / "digits.yaml"
    overrides = [f"count_per_class={args.count_per_class}"]
    cold = ["dask", "direct"] if args.dask_first else ["direct", "dask"]
    cold_dask = "cold+preload" if args.preload else "cold"  # Direct's first build: "cold"
    runs = [(r, cold_dask if r == "dask" else "cold") for r in cold] + [
        (r, "warm") for _ in range(args.warm_pairs) for r in ("direct", "dask")
    ]
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        preload=["synthgen.pipelines.dask_preload"] if args.preload else [],
    )
    print(
        f"cluster of {args.workers} workers started in {time.monotonic() - start:.1f} s"
        + (" (workers warmed by synthgen.pipelines.dask_preload)" if args.preload else ""),
        flush=True,
    )
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (runner, phase) in enumerate(runs):
                out = Path(tmp) / f"{i}-{runner}"
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
                times[runner, phase].append(seconds)
                planned = result.manifest.counts.planned
                by_process = generated_by_process(out / ".synthgen" / "progress")
                generated = sum(by_process.values())
                split = " + ".join(str(n) for n in sorted(by_process.values(), reverse=True))
                print(
                    f"{runner:6s} {phase:12s} {seconds:6.1f} s  planned {planned}  generated "
                    f"{generated} ({generated / planned:.2f} per planned sample)"
                    + (f"  by worker process: {split}" if runner == "dask" else ""),
                    flush=True,
                )
    finally:
        cluster.close()
    cold_ratio = times["dask", cold_dask][0] / times["direct", "cold"][0]
    summary = f"{cold_dask} {cold_ratio:.2f}"
    if args.warm_pairs:
        warm = {r: statistics.median(times[r, "warm"]) for r in ("direct", "dask")}
        summary += (
            f", warm {warm['dask'] / warm['direct']:.2f} "
            f"(medians of {args.warm_pairs}: Direct {warm['direct']:.1f} s, "
            f"Dask {warm['dask']:.1f} s)"
        )
    print(
        f"machine: {os.cpu_count()} CPU cores, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after; Dask ({args.workers} one-thread workers) / Direct "
        f"wall time: {summary}"
    )


if __name__ == "__main__":
    main()
