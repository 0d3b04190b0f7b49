"""Governance cost per 512x512 image on one core: watermark embedding, the `watermark` check
(decode + compare), and `synthgen verify`'s per-image work (sha256 + decode + watermark).

    .venv/bin/python benchmarks/governance.py [--images 20]

Goal: < 40 ms per image per core for embedding + verification (C2PA signing is not
implemented yet, so it is not measured). Prints one JSON block of milliseconds per image.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

from synthgen.storage.hashing import bytes_sha256
from synthgen.storage.images import decode_image, encode_image
from synthgen.storage.watermark import embed_watermark, read_watermark, watermark_payload


def picture(seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 255
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    payload = watermark_payload("ab12cd34" + "0" * 56)
    pictures = [picture(i) for i in range(args.images)]
    embed_watermark(pictures[0], payload)  # import and warm up
    t0 = time.perf_counter()
    marked = [embed_watermark(p, payload) for p in pictures]
    t1 = time.perf_counter()
    encoded = [encode_image(m, "png", 1) for m in marked]
    t2 = time.perf_counter()
    ok = 0
    for data in encoded:
        bytes_sha256(data)
        ok += read_watermark(np.asarray(decode_image(data))) == payload
    t3 = time.perf_counter()
    n = args.images
    figures = {
        "images": n,
        "survived": ok,
        "embed_ms": round((t1 - t0) / n * 1000, 1),
        "png_encode_ms (not governance)": round((t2 - t1) / n * 1000, 1),
        "verify_ms (sha256 + decode + watermark)": round((t3 - t2) / n * 1000, 1),
        "governance_ms (embed + verify)": round(((t1 - t0) + (t3 - t2)) / n * 1000, 1),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
