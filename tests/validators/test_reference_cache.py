"""The reference-embedding cache shared across builds: a shared file whose sha256 differs
from its record is never used. (Two builds sharing one embedding:
tests/validators/test_report_trend.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthgen.storage.cache import CACHE_ENV
from synthgen.validators import nearest
from tests.conftest import tiny_recipe_dict
from tests.validators.conftest import png


def reference_folder(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for cls in ("zero", "one", "two"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(png(rng.integers(0, 256, (32, 32, 3))))
    return root


def recipe(model_dir: Path, reference: Path) -> dict[str, Any]:
    data = tiny_recipe_dict(model_dir, count_per_class=1)
    data["checks"] = {"clip_score": None, "exact_duplicate": False}
    data["scoring"] = {**data["scoring"], "scorers": [{"name": "clip"}, {"name": "clip_embedding"}]}
    data["reference"] = {"source": str(reference)}
    return data


def test_a_changed_shared_file_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    ref = nearest.ReferenceSet(
        ["r0", "r1"], [0, 1], ["0" * 16, "f" * 16], np.eye(2, dtype=np.float32), [b"", b""]
    )
    made: list[int] = []

    def make() -> nearest.ReferenceSet:
        made.append(1)
        return ref

    key = nearest.cache_key("src", "clip", {"classes": {}})
    nearest.cached_reference(tmp_path / "b1", "reference", key, make)
    nearest.cached_reference(tmp_path / "b2", "reference", key, make)
    assert len(made) == 1
    shared = tmp_path / "cache" / "references" / f"{key}.parquet"
    shared.write_bytes(shared.read_bytes()[:-8] + b"tampered")  # same size, other bytes
    path = nearest.cached_reference(tmp_path / "b3", "reference", key, make)
    assert len(made) == 2 and nearest.read_reference(path).refs == ["r0", "r1"]
    # the cache was repaired: its record matches again
    nearest.cached_reference(tmp_path / "b4", "reference", key, make)
    assert len(made) == 2
    monkeypatch.setenv(CACHE_ENV, "off")
    nearest.cached_reference(tmp_path / "b5", "reference", key, make)
    assert len(made) == 3
