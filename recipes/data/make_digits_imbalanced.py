"""Write recipes/data/digits-imbalanced.parquet: the balancing recipes' shipped source.

recipes/data/digits-train.parquet (the real digits train split, 16x16, made by
make_digits_train.py) with digits 3, 5 and 8 cut to their first 5 samples each: the cut
benchmarks/balance_digits.py measures (`--minority 3 5 8 --keep 5`). The recipes
recipes/digits-balance*.yaml top it up. Deterministic: rerunning it gives the same file (run
from the repository root: `.venv/bin/python recipes/data/make_digits_imbalanced.py`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "digits-train.parquet"
OUT = HERE / "digits-imbalanced.parquet"
MINORITY = ("3", "5", "8")
KEEP = 5


def main() -> None:
    table = pq.read_table(TRAIN, columns=["label", "image"])
    seen: dict[str, int] = {}
    keep = []
    for label in table.column("label").to_pylist():
        seen[label] = seen.get(label, 0) + 1
        keep.append(label not in MINORITY or seen[label] <= KEEP)
    cut = table.filter(pa.array(keep))
    pq.write_table(cut, OUT, compression="zstd")
    print(f"wrote {OUT} ({cut.num_rows} of {table.num_rows} images, {OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
