"""Image measurements the checks use; each becomes a Parquet column."""

from __future__ import annotations

import numpy as np

from synthgen.storage.images import decode_image

MEASURE_COLUMNS = ("brightness", "sharpness", "entropy")


def measure_image(data: bytes) -> tuple[dict[str, float], str]:
    """(brightness, sharpness, entropy) of the grey image, and its 64-bit perceptual hash.

    brightness: mean grey level in [0, 1]; sharpness: variance of the 4-neighbour Laplacian
    (grey in [0, 1]); entropy: Shannon entropy of the 256-level grey histogram, in bits.
    """
    import imagehash

    img = decode_image(data)
    grey = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    lap = (
        -4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
    )
    hist = np.bincount((grey * 255).round().astype(np.int64).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    values = {
        "brightness": float(grey.mean()),
        "sharpness": float(lap.var()) if lap.size else 0.0,
        "entropy": float(-(p * np.log2(p)).sum()),
    }
    return values, str(imagehash.phash(img))
