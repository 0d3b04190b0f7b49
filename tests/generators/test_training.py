from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from synthgen.generators.model_folder import check_diffusers_folder, load_pipeline
from synthgen.generators.training.data import caption, load_split, to_features, to_images
from synthgen.generators.training.default_models import (
    CLIP_DIR,
    LDM_DIR,
    quick_config,
    train_default,
)
from synthgen.validators.clip_folder import load_clip
from synthgen.validators.clip_model import clip_similarity


def test_split_is_fixed_and_stratified() -> None:
    split = load_split()
    assert len(split.x_train) == 1347 and len(split.x_test) == 450
    fraction = np.bincount(split.y_test) / (np.bincount(split.y_test) + np.bincount(split.y_train))
    assert np.all(np.abs(fraction - 0.25) < 0.01), "stratified by label"
    again = load_split()
    assert np.array_equal(split.x_train, again.x_train)


def test_features_round_trip_real_digits() -> None:
    split = load_split()
    feats = to_features(to_images(split.x_train[:20], 16))
    assert feats.shape == (20, 64)
    # up- then down-sampling keeps the digit: close to the original 8x8 pixels
    assert np.abs(feats - split.x_train[:20]).mean() < 1.5


def test_captions_vary() -> None:
    assert caption(7, 0) == "a handwritten digit 7"
    assert caption(7, 1) == "the number seven"
    assert len({caption(3, t) for t in range(8)}) == 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained")
    summary = train_default(out, quick_config(steps=3))
    return out, summary


def test_training_writes_loadable_models(trained: tuple[Path, dict]) -> None:
    out, summary = trained
    check_diffusers_folder(out / LDM_DIR)
    pipe = load_pipeline(out / LDM_DIR, "ddim", "float32", "cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.vae.config.scaling_factor == pytest.approx(
        summary["diffusion"]["figures"]["latent_scaling_factor"]
    )
    bundle = load_clip(out / CLIP_DIR)
    from PIL import Image

    scores = clip_similarity(bundle, [Image.new("RGB", (16, 16))] * 2, ["a", "b"])
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)
    assert not list(out.glob("tmp*")), "temporary training folders must be cleaned up"
    assert (out / LDM_DIR / "training.json").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


def test_training_is_seeded(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    train_default(tmp_path, quick_config(steps=3))
    for rel in (
        f"{LDM_DIR}/unet/diffusion_pytorch_model.safetensors",
        f"{CLIP_DIR}/digits-clip.safetensors",
    ):
        a, b = load_file(str(out / rel)), load_file(str(tmp_path / rel))
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a)
