"""Tiny builds that several test modules only read, made once per test session (see
`shared_build`). A test that changes one copies it first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SPLIT_THRESHOLD, shared_build, tiny_recipe_dict, write_recipe


@pytest.fixture(scope="session")
def split_build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The tiny build (12 samples, 3 shards) with the CLIP threshold at about the median
    tiny-CLIP score, so some samples are rejected; its recipe is `out.parent / "recipe.yaml"`."""
    from synthgen.pipelines.build import run_build

    def make(root: Path) -> None:
        data = tiny_recipe_dict(model_dir)
        data["checks"]["clip_score"] = {"absolute": SPLIT_THRESHOLD}
        root.mkdir(parents=True, exist_ok=True)
        run_build(write_recipe(root / "recipe.yaml", data), root / "out", show_progress=False)

    return shared_build(tmp_path_factory, "split", make, done="out/manifest.json") / "out"


@pytest.fixture(scope="session")
def default_build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The tiny build of `tiny_recipe_dict` as it is; its recipe is `out.parent / "recipe.yaml"`
    and its BuildResult's metrics are in `out.parent / "metrics.json"`."""
    from synthgen.pipelines.build import run_build

    def make(root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        recipe = write_recipe(root / "recipe.yaml", tiny_recipe_dict(model_dir))
        result = run_build(recipe, root / "out", show_progress=False)
        (root / "metrics.json").write_text(json.dumps(result.metrics), encoding="utf-8")

    return shared_build(tmp_path_factory, "default", make, done="metrics.json") / "out"


@pytest.fixture(scope="session")
def balanced_build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A balancing build that tops the folder source of test_balance.make_folder up to the
    largest class (overgenerate 1.0, at most 6 rounds); the source is `out.parent / "source"`."""
    from synthgen.pipelines.build import run_build
    from tests.pipelines.test_balance import _balance_recipe, make_folder

    def make(root: Path) -> None:
        source = make_folder(root / "source")
        recipe = _balance_recipe(root, model_dir, str(source), overgenerate=1.0, max_rounds=6)
        run_build(recipe, root / "out", show_progress=False)

    return shared_build(tmp_path_factory, "balanced", make, done="out/manifest.json") / "out"
