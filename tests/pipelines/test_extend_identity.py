"""`--extend` compares the build identity (model and scorer content hashes), as `--resume` does:
the same recipe pointing at other weights is not an extension of the parent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from synthgen.pipelines.build import BuildError, run_build
from synthgen.schemas.manifest import STATE_DIR
from tests.conftest import tiny_recipe_dict, write_recipe


@pytest.fixture
def models(tmp_path: Path, model_dir: Path) -> Path:
    """A private copy of the tiny models, so that a test may change their weights."""
    return Path(shutil.copytree(model_dir, tmp_path / "models"))


def _parent(tmp_path: Path, models: Path) -> Path:
    recipe = write_recipe(tmp_path / "parent.yaml", tiny_recipe_dict(models, count_per_class=1))
    return run_build(recipe, tmp_path / "parent", show_progress=False).output


def _perturb(folder: Path) -> None:
    """Other weights at the same path: every tensor of the first weights file nudged."""
    weights = sorted(folder.rglob("*.safetensors"))[0]
    tensors = load_file(weights)
    save_file({k: (v + 0.01 if v.is_floating_point() else v) for k, v in tensors.items()}, weights)


def _grown(tmp_path: Path, models: Path) -> Path:
    return write_recipe(tmp_path / "grown.yaml", tiny_recipe_dict(models, count_per_class=2))


@pytest.mark.parametrize("drop_state", [False, True], ids=["local", "manifest-only"])
def test_extend_refuses_changed_model_weights_at_the_same_path(
    tmp_path: Path, models: Path, drop_state: bool
) -> None:
    parent = _parent(tmp_path, models)
    if drop_state:  # a parent pulled from a store has no .synthgen/: the manifest decides
        shutil.rmtree(parent / STATE_DIR)
    _perturb(models / "sd" / "unet")
    with pytest.raises(BuildError, match=r"--extend .*model_sha256") as info:
        run_build(_grown(tmp_path, models), tmp_path / "child", extend=parent, show_progress=False)
    assert "scorer" not in str(info.value)
    assert not (tmp_path / "child").exists()


def test_extend_refuses_changed_scorer_weights_by_name(tmp_path: Path, models: Path) -> None:
    parent = _parent(tmp_path, models)
    _perturb(models / "clip")
    with pytest.raises(BuildError, match=r"--extend .*scorer_\w+_sha256") as info:
        run_build(_grown(tmp_path, models), tmp_path / "child", extend=parent, show_progress=False)
    assert "model_sha256" not in str(info.value)
    assert not (tmp_path / "child").exists()
