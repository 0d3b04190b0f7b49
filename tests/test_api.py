"""The Python API: synthgen.build from a path, a dict or a Recipe; synthgen.load readers."""

from __future__ import annotations

from pathlib import Path

import pytest

import synthgen
from synthgen.pipelines.output import BuildError
from synthgen.schemas.recipe import recipe_from_dict
from tests.conftest import SPLIT_THRESHOLD, tiny_recipe_dict


def test_build_from_a_dict_and_load_it(tmp_path: Path, model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}}
    result = synthgen.build(data, tmp_path / "out", overrides=["count_per_class=2"])
    assert result.manifest.counts.planned == 6
    corpus = synthgen.load(tmp_path / "out", verify=True)
    assert corpus.manifest == result.manifest
    samples = list(corpus.webdataset().decode("pil").to_tuple("png", "cls"))
    assert 0 < len(samples) == result.manifest.counts.accepted
    assert {img.size for img, _ in samples} == {(32, 32)}
    table = corpus.arrow().to_table(columns=["key", "status"])
    assert table.num_rows == 6

    # the same recipe as a Recipe object builds the same corpus
    recipe = recipe_from_dict({**data, "count_per_class": 2})
    again = synthgen.build(recipe, tmp_path / "again")
    assert again.manifest.recipe_hash == result.manifest.recipe_hash
    images = {"key", "image_sha256", "status"}

    def rows(corpus: synthgen.Corpus) -> list[dict]:
        return sorted(corpus.arrow().to_table(columns=sorted(images)).to_pylist(), key=str)

    assert rows(synthgen.load(again.output)) == rows(corpus)  # created_at alone differs


def test_load_refuses_an_incomplete_build(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(BuildError, match="not a complete build"):
        synthgen.load(tmp_path / "half")


def test_import_synthgen_is_cheap() -> None:
    import subprocess
    import sys

    heavy = "('torch', 'apache_beam', 'diffusers')"
    code = f"import sys, synthgen; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]"
