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


# sha256 (its first 16 hex digits) of every file `train_default(quick_config(steps=3))` writes
# but training.json, by path
QUICK_MODEL_FILES = {
    "digits-clip/digits-clip.json": "191387d031bcd857",
    "digits-clip/digits-clip.safetensors": "13bad80bccf17a67",
    "digits-ldm/model_index.json": "bbd75dd0f2fd4557",
    "digits-ldm/scheduler/scheduler_config.json": "f21b19e4ff75c02f",
    "digits-ldm/synthgen_layout.json": "04504263fe76f80c",
    "digits-ldm/text_encoder/config.json": "f918ecb8407ae619",
    "digits-ldm/text_encoder/model.safetensors": "10d97dab82936831",
    "digits-ldm/tokenizer/tokenizer.json": "3800df9a38f5abc0",
    "digits-ldm/tokenizer/tokenizer_config.json": "fe1e1ca33c6e75e4",
    "digits-ldm/unet/config.json": "c212df65313a1dc9",
    "digits-ldm/unet/diffusion_pytorch_model.safetensors": "4c7aec8a929a8d7e",
    "digits-ldm/vae/config.json": "20f16b1bf6670c22",
    "digits-ldm/vae/diffusion_pytorch_model.safetensors": "1b620f64ca6d8ecd",
}
QUICK_FIGURES = {
    "latent_scaling_factor": 3.4877703189849854,
    "unet_loss": 1.067416929912567,
    "vae_recon_mse": 0.6419044824123382,
    "clip_final_loss": 3.8927266638755795,
    "zero_shot_accuracy": 0.1,
    "right_prompt_wins": 0.1,
    "mean_right_similarity": -0.22168487310409546,
    "mean_best_wrong_similarity": -0.19438958168029785,
}

# The same quick training on other x86 machines, whose kernels round differently: what
# differs there from the records above.
MACHINE_VARIANTS: dict[str, tuple[dict[str, str], dict[str, float]]] = {
    "avx512": (
        {
            "digits-clip/digits-clip.safetensors": "c5df9aabe70d972b",
            "digits-ldm/text_encoder/model.safetensors": "69938883d7c0e995",
            "digits-ldm/unet/diffusion_pytorch_model.safetensors": "c2d114f9c859ce0d",
            "digits-ldm/vae/diffusion_pytorch_model.safetensors": "dd9d390d91e3f376",
        },
        {"unet_loss": 1.0674169251441956, "mean_right_similarity": -0.22168485820293427},
    ),
    "avx2-epyc": (  # AMD EPYC without AVX-512 (torch CPU capability AVX2)
        {
            "digits-clip/digits-clip.safetensors": "f22952c214643e6e",
            "digits-ldm/text_encoder/model.safetensors": "f2edc8ab9f941331",
            "digits-ldm/unet/diffusion_pytorch_model.safetensors": "2d5781f352ace346",
            "digits-ldm/vae/diffusion_pytorch_model.safetensors": "fb643197a24cce88",
        },
        {
            "unet_loss": 1.0674168154239654,
            "clip_final_loss": 3.892727126502991,
            "mean_best_wrong_similarity": -0.19438950717449188,
        },
    ),
}


def recorded_training() -> list[tuple[dict[str, str], dict[str, float]]]:
    """The main record, then each machine variant applied to it."""
    return [(QUICK_MODEL_FILES, QUICK_FIGURES)] + [
        (QUICK_MODEL_FILES | files, QUICK_FIGURES | figures)
        for files, figures in MACHINE_VARIANTS.values()
    ]


def test_trained_models_are_pinned(trained: tuple[Path, dict]) -> None:
    """The quick training's files and figures, byte for byte (CPU, this torch build): a change
    to how training is put together must not change what it trains."""
    import hashlib
    import json

    out, summary = trained
    files = {
        str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        for f in sorted(out.rglob("*"))
        if f.is_file() and f.name != "training.json"
    }
    records = [r for r in recorded_training() if r[0] == files]
    assert records, files  # the files of one recorded machine, byte for byte
    figures = summary["diffusion"]["figures"]
    clip = summary["clip"]
    got = {
        "latent_scaling_factor": figures["latent_scaling_factor"],
        "unet_loss": figures["unet_loss"],
        "vae_recon_mse": figures["vae_recon_mse"],
        "clip_final_loss": clip["final_loss"],
        **clip["test_split"],
    }
    assert got == records[0][1]
    written = json.loads((out / LDM_DIR / "training.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert sorted(written) == ["clip", "data", "diffusion", "threads", "torch"]
