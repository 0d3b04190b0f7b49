"""Governance cost per 512x512 image on one core, side by side: watermark embedding, C2PA
signing (ES256, a throw-away test CA), and `synthgen verify`'s per-image work (sha256 +
decode + watermark; then reading and validating the C2PA credentials), for PNG, WebP and
JPEG in one run. The watermark is timed twice: synthgen's vectorised codec and the
`invisible-watermark` library's `EmbedMaxDct` on the same float32 path (what synthgen ran
before), and their pixels are compared.

    taskset -c 0 .venv/bin/python benchmarks/governance.py [--images 20] [--formats png webp jpeg]

Goal (issue 14): < 40 ms per image per core for watermark + signing + verification.
Prints a table of median milliseconds per image, then the same figures as one JSON block.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: before numpy (and torch) start their pools

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2
import numpy as np

from synthgen.storage import c2pa_sign
from synthgen.storage.hashing import bytes_sha256
from synthgen.storage.images import decode_image, encode_image
from synthgen.storage.watermark import (
    BLOCK,
    SCALES,
    embed_watermark,
    read_watermark,
    watermark_payload,
)

GOAL_MS = 40.0


def picture(seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 255
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def library_codec(payload: bytes | None, length: int) -> Any:
    from imwatermark.maxDct import EmbedMaxDct

    bits = list(np.unpackbits(np.frombuffer(payload, np.uint8))) if payload else []
    return EmbedMaxDct(bits, wmLen=8 * length, scales=list(SCALES), block=BLOCK)


def library_embed(pixels: np.ndarray, payload: bytes) -> np.ndarray:
    """synthgen's embedding before it was vectorised: the library on float32 BGR."""
    bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)
    out = library_codec(payload, len(payload)).encode(bgr)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)[:, :, ::-1])


def library_read(pixels: np.ndarray, length: int) -> bytes:
    bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)
    bits = np.asarray(library_codec(None, length).decode(bgr), dtype=np.uint8)
    return np.packbits(bits).tobytes()


def timed(fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], float]:
    """fn over items: (results, median milliseconds per item)."""
    out, times = [], []
    for item in items:
        t0 = time.perf_counter()
        out.append(fn(item))
        times.append(time.perf_counter() - t0)
    return out, round(statistics.median(times) * 1000, 2)


def main() -> None:
    from tests.pipelines.test_c2pa import make_pki

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--formats", nargs="+", default=["png", "webp", "jpeg"])
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    n = args.images
    payload = watermark_payload("ab12cd34" + "0" * 56)
    pictures = [picture(i) for i in range(n)]
    embed_watermark(pictures[0], payload)  # import and warm up
    library_embed(pictures[0], payload)
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        config = c2pa_sign.SigningConfig(str(pki.chain), None, str(pki.key), None)
        signer = c2pa_sign._signer(config)
        anchors = pki.ca.read_bytes()

    # the watermark, embedded both ways (the same for every format)
    marked, embed_ms = timed(lambda p: embed_watermark(p, payload), pictures)
    reference, library_embed_ms = timed(lambda p: library_embed(p, payload), pictures)
    identical = sum(np.array_equal(a, b) for a, b in zip(marked, reference, strict=True))

    figures: dict[str, Any] = {
        "images": n,
        "pixels identical to the library's": f"{identical}/{n}",
        "embed_ms": embed_ms,
        "library_embed_ms": library_embed_ms,
        "formats": {},
    }
    for fmt in args.formats:
        definitions = [
            c2pa_sign.manifest_definition(fmt, {"key": f"k{i}", "seed": i, "recipe_hash": "ab"})
            for i in range(n)
        ]
        warm = encode_image(pictures[0], fmt, 1)
        c2pa_sign.read_credentials(c2pa_sign.sign_image(warm, fmt, definitions[0], signer), anchors)
        encoded, encode_ms = timed(partial(encode_image, fmt=fmt, png_compress_level=1), marked)
        signed, sign_ms = timed(
            lambda pair: c2pa_sign.sign_image(pair[0], pair[1], pair[2], signer),
            [(d, fmt, defn) for d, defn in zip(encoded, definitions, strict=True)],
        )
        decoded, decode_ms = timed(
            lambda d: (bytes_sha256(d), np.asarray(decode_image(d)))[1], signed
        )
        found, read_ms = timed(read_watermark, decoded)
        library_found, library_read_ms = timed(lambda p: library_read(p, 6), decoded)
        credentials, verify_c2pa_ms = timed(
            lambda d: c2pa_sign.read_credentials(d, anchors), signed
        )
        verify_ms = decode_ms + read_ms
        total = embed_ms + sign_ms + verify_ms + verify_c2pa_ms
        library_total = library_embed_ms + sign_ms + decode_ms + library_read_ms + verify_c2pa_ms
        figures["formats"][fmt] = {
            "watermark_survived": sum(f == payload for f in found),
            "library_agrees": sum(a == b for a, b in zip(found, library_found, strict=True)),
            "credentials_trusted": sum(c.trusted is True for c in credentials),
            "encode_ms (not governance)": encode_ms,
            "c2pa_sign_ms": sign_ms,
            "sha256_and_decode_ms": decode_ms,
            "watermark_read_ms": read_ms,
            "library_watermark_read_ms": library_read_ms,
            "verify_c2pa_ms": verify_c2pa_ms,
            "governance_ms": round(total, 2),
            "governance_ms with the library": round(library_total, 2),
            "goal_met": total < GOAL_MS,
        }

    rows = [
        ("watermark embed, synthgen", lambda f: embed_ms),
        ("watermark embed, library", lambda f: library_embed_ms),
        ("C2PA sign", lambda f: f["c2pa_sign_ms"]),
        ("verify: sha256 + image decode", lambda f: f["sha256_and_decode_ms"]),
        ("verify: watermark read, synthgen", lambda f: f["watermark_read_ms"]),
        ("verify: watermark read, library", lambda f: f["library_watermark_read_ms"]),
        ("verify: C2PA read + validate + trust", lambda f: f["verify_c2pa_ms"]),
        ("governance total, synthgen", lambda f: f["governance_ms"]),
        ("governance total, with the library", lambda f: f["governance_ms with the library"]),
        ("encode (not governance)", lambda f: f["encode_ms (not governance)"]),
    ]
    formats = figures["formats"]
    print(f"median ms per 512x512 image, one core, {n} images")
    print(f"{'':40s}" + "".join(f"{fmt:>9s}" for fmt in formats))
    for label, get in rows:
        print(f"{label:40s}" + "".join(f"{get(f):9.1f}" for f in formats.values()))
    print(f"pixels identical to the library's: {identical}/{n}")
    for fmt, f in formats.items():
        verdict = "met" if f["goal_met"] else "NOT met"
        print(
            f"{fmt}: governance {f['governance_ms']:.1f} ms < {GOAL_MS:.0f} ms goal {verdict}; "
            f"payload survived {f['watermark_survived']}/{n}, library's reader agrees "
            f"{f['library_agrees']}/{n}, credentials trusted {f['credentials_trusted']}/{n}"
        )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
