from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthgen.generators.training.data import load_split, to_images
from synthgen.generators.training.motion import (
    DIRECTIONS,
    MOTION_DIR,
    MotionTrainConfig,
    moving_digits,
    shifted,
    sway,
    train_motion_default,
    weight_digests,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
QUICK = MotionTrainConfig(steps=3, batch=2, threads=1)


def test_sway_moves_one_pixel_per_frame_within_the_amplitude() -> None:
    assert sway(8, 1, 0) == [0, 1, 0, -1, 0, 1, 0, -1]
    assert sway(4, 1, 2) == [0, -1, 0, 1]
    path = sway(12, 2, 3)
    assert max(path) == 2 and min(path) == -2
    assert all(abs(b - a) == 1 for a, b in itertools.pairwise(path))


def test_moving_digits_are_seeded_shifts_of_one_digit() -> None:
    x = load_split().x_train[:50]
    cfg = MotionTrainConfig()
    clips, rows = moving_digits(x, 6, cfg, seed=3)
    again, rows_again = moving_digits(x, 6, cfg, seed=3)
    assert clips.shape == (6, 8, 3, 16, 16)
    assert torch.equal(clips, again) and np.array_equal(rows, rows_again)
    for clip, row in zip(clips, rows, strict=True):
        image = to_images(x[row : row + 1], 16)
        shifts = [shifted(image, i, 1)[0] for i in range(9)]
        which = [next(i for i, s in enumerate(shifts) if torch.equal(s, f)) for f in clip]
        assert len(set(which)) > 1, "the digit moves"
        for a, b in itertools.pairwise(which):
            (ay, ax), (by, bx) = divmod(a, 3), divmod(b, 3)
            step = (by - ay, bx - ax)
            assert step in DIRECTIONS or (-step[0], -step[1]) in DIRECTIONS, "a pixel a frame"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("motion")
    summary = train_motion_default(out, MODELS / "digits-ldm", QUICK, limit=20)
    return out / MOTION_DIR, summary


def test_quick_training_is_byte_for_byte_seeded(quick: tuple[Path, dict], tmp_path: Path) -> None:
    folder, summary = quick
    train_motion_default(tmp_path, MODELS / "digits-ldm", QUICK, limit=20)
    first, second = weight_digests(folder), weight_digests(tmp_path / MOTION_DIR)
    assert first == second and "motion_adapter/diffusion_pytorch_model.safetensors" in first
    assert summary["motion"]["weights_sha256"] == first
    assert summary["motion"]["figures"]["clips_seen"] == 6


def test_only_the_motion_modules_learn(quick: tuple[Path, dict]) -> None:
    folder, _ = quick
    base = load_file(str(MODELS / "digits-ldm" / "unet" / "diffusion_pytorch_model.safetensors"))
    unet = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    spatial = [k for k in unet if "motion_modules" not in k]
    assert spatial and all(torch.equal(unet[k], base[k]) for k in spatial)
    adapter = load_file(str(folder / "motion_adapter" / "diffusion_pytorch_model.safetensors"))
    outs = [k for k in adapter if k.endswith("proj_out.weight")]
    assert outs, "the adapter's temporal transformers"
    # zero-initialised output projections: three steps of training moved them off zero
    assert all(adapter[k].abs().sum() > 0 for k in outs)
    # the adapter file and the motion UNet hold the same trained motion modules
    assert all(torch.equal(unet[k], v) for k, v in adapter.items())


def test_saved_folder_makes_clips(quick: tuple[Path, dict]) -> None:
    from diffusers import AnimateDiffPipeline

    folder, summary = quick
    pipe = AnimateDiffPipeline.from_pretrained(str(folder), local_files_only=True)
    assert type(pipe.unet).__name__ == "UNetMotionModel"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=["a handwritten digit 3", "the number seven"],
        num_frames=8,
        num_inference_steps=2,
        guidance_scale=3.0,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert np.asarray(out).shape == (2, 8, 16, 16, 3)
    written = json.loads((folder / "training.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert "load_digits" in written["data"] and written["diffusion"]["config"]["layout"]
    card = (folder / "README.md").read_text()
    unet_sha = summary["motion"]["weights_sha256"]["unet/diffusion_pytorch_model.safetensors"]
    assert unet_sha[:16] in card
    assert not list(folder.rglob("*.bin")) and not list(folder.parent.glob("tmp*"))


def test_committed_model_matches_its_record() -> None:
    folder = MODELS / MOTION_DIR
    record = json.loads((folder / "training.json").read_text())
    assert weight_digests(folder) == record["motion"]["weights_sha256"]
    assert weight_digests(MODELS / "digits-ldm") == record["motion"]["base"]["weights_sha256"]
