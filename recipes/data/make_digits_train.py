"""Write recipes/data/digits-train.parquet: the real digits the bundled models learned from.

scikit-learn's handwritten digits, the same fixed train split and 16x16 rendering as the
default models' training (synthgen.generators.training.data), as PNG bytes with the class id
as label. It is the `reference:` of recipes/digits.yaml. Deterministic: rerunning it gives
the same file (run from the repository root: `.venv/bin/python recipes/data/make_digits_train.py`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synthgen.generators.training.data import load_split, to_images

SIZE = 16
OUT = Path(__file__).resolve().parent / "digits-train.parquet"


def main() -> None:
    split = load_split()
    images = to_images(split.x_train, SIZE)  # (N, 3, 16, 16) in [0, 1]
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    encoded = []
    for arr in pixels:
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=9)
        encoded.append(buf.getvalue())
    table = pa.table(
        {
            "label": pa.array([str(int(v)) for v in split.y_train], pa.string()),
            "image": pa.array(encoded, pa.binary()),
        }
    )
    pq.write_table(table, OUT, compression="zstd")
    print(f"wrote {OUT} ({table.num_rows} images, {OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
