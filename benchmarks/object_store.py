"""Writing a build to S3 vs to a local folder: wall time of the same recipe, side by side.

    .venv/bin/python benchmarks/object_store.py [--count-per-class 50]

Starts moto's S3 server on 127.0.0.1 (an S3-compatible endpoint: it measures synthgen's
upload path, not a real network), then builds the default digits recipe local, S3, local
again (the median local time is used) and prints the times, their ratio, and the bytes
uploaded. Prints the machine's core count with the figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.pipelines.build import run_build
from synthgen.storage.store import open_store


def _server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count-per-class", type=int, default=50)
    args = parser.parse_args()
    proc, endpoint = _server()
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    recipe = ROOT / "recipes" / "digits.yaml"
    overrides = [f"count_per_class={args.count_per_class}"]
    local: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["SYNTHGEN_CACHE_DIR"] = str(Path(tmp) / "cache")
            for i, where in enumerate(("local", "s3", "local")):
                out = f"s3://bench/run-{i}" if where == "s3" else str(Path(tmp) / f"local-{i}")
                start = time.monotonic()
                result = run_build(recipe, out, overrides=overrides, show_progress=False)
                seconds = time.monotonic() - start
                print(f"{where:5s} {seconds:6.1f} s  {result.manifest.counts.attempted} samples")
                if where == "local":
                    local.append(seconds)
                else:
                    s3_seconds = seconds
                    uploaded = sum(open_store(out).listing().values())
    finally:
        proc.terminate()
    base = statistics.median(local)
    print(
        f"machine: {os.cpu_count()} CPU cores; S3 (moto on loopback) / local wall time: "
        f"{s3_seconds / base:.3f}; {uploaded / 1e6:.1f} MB uploaded"
    )


if __name__ == "__main__":
    main()
