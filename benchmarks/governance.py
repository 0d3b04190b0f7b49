"""Governance cost per 512x512 image on one core, side by side: watermark embedding, C2PA
signing (ES256, a throw-away test CA), and `synthgen verify`'s per-image work (sha256 +
decode + watermark; then reading and validating the C2PA credentials).

    .venv/bin/python benchmarks/governance.py [--images 20] [--format png]

Goal: < 40 ms per image per core for watermark + signing + verification. Prints one JSON
block of milliseconds per image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2
import numpy as np

from synthgen.storage import c2pa_sign
from synthgen.storage.hashing import bytes_sha256
from synthgen.storage.images import decode_image, encode_image
from synthgen.storage.watermark import embed_watermark, read_watermark, watermark_payload


def picture(seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 255
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    from tests.pipelines.test_c2pa import make_pki

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    args = parser.parse_args()
    cv2.setNumThreads(1)
    fmt = args.format
    payload = watermark_payload("ab12cd34" + "0" * 56)
    pictures = [picture(i) for i in range(args.images)]
    embed_watermark(pictures[0], payload)  # import and warm up
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        config = c2pa_sign.SigningConfig(str(pki.chain), None, str(pki.key), None)
        signer = c2pa_sign._signer(config)
        anchors = pki.ca.read_bytes()
    definitions = [
        c2pa_sign.manifest_definition(fmt, {"key": f"k{i}", "seed": i, "recipe_hash": "ab"})
        for i in range(args.images)
    ]
    warm = encode_image(pictures[0], fmt, 1)
    c2pa_sign.read_credentials(c2pa_sign.sign_image(warm, fmt, definitions[0], signer), anchors)

    t0 = time.perf_counter()
    marked = [embed_watermark(p, payload) for p in pictures]
    t1 = time.perf_counter()
    encoded = [encode_image(m, fmt, 1) for m in marked]
    t2 = time.perf_counter()
    signed = [
        c2pa_sign.sign_image(d, fmt, defn, signer)
        for d, defn in zip(encoded, definitions, strict=True)
    ]
    t3 = time.perf_counter()
    ok = 0
    for data in signed:
        bytes_sha256(data)
        ok += read_watermark(np.asarray(decode_image(data))) == payload
    t4 = time.perf_counter()
    valid = sum(c2pa_sign.read_credentials(d, anchors).trusted is True for d in signed)
    t5 = time.perf_counter()
    n = args.images

    def ms(seconds: float) -> float:
        return round(seconds / n * 1000, 1)

    figures = {
        "images": n,
        "format": fmt,
        "watermark_survived": ok,
        "credentials_trusted": valid,
        "embed_watermark_ms": ms(t1 - t0),
        f"{fmt}_encode_ms (not governance)": ms(t2 - t1),
        "c2pa_sign_ms": ms(t3 - t2),
        "verify_watermark_ms (sha256 + decode + watermark)": ms(t4 - t3),
        "verify_c2pa_ms (read + validate + trust)": ms(t5 - t4),
        "governance_ms (all of the above but encoding)": ms((t1 - t0) + (t5 - t2)),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
