"""A per-class LoRA's training, pinned: on the tiny random pipeline, with fixed images, prompts
and seed, `train_lora` writes the adapter bytes recorded here (epsilon and v-prediction),
reports the recorded loss and leaves no trainable weight behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthgen.generators import model_folder
from synthgen.generators.lora_training import train_lora
from synthgen.schemas.recipe import LoraTrainSpec

# prediction type -> (adapter sha256, final loss)
PINNED: dict[str, tuple[str, float]] = {
    "epsilon": (
        "72b7c76757e017bcf84633fd73cf80546f44b3c985423920e5b092c68af7e813",
        1.0991299784183504,
    ),
    "v_prediction": (
        "482666331bd2ac930f5f8fd2f3b4b33e44cf81c00c24c18d45d83a486e19e3c3",
        0.45330882072448736,
    ),
}

# The same training on a second x86 machine (AMD EPYC, torch CPU capability AVX512), whose
# kernels round differently.
PINNED_AVX512: dict[str, tuple[str, float]] = {
    "epsilon": (
        "8198f449a59aecf289c7e89b16a466cb08a3a2e1827794d00fc603131a3179fc",
        1.0991300749778747,
    ),
    "v_prediction": (
        "8bc6cb4da3800bd65f073bc2c80ee4cae8b293034980949253b4d45ef8fec96d",
        0.4533088150620461,
    ),
}

# A third (AMD EPYC without AVX-512, torch CPU capability AVX2).
PINNED_AVX2_EPYC: dict[str, tuple[str, float]] = {
    "epsilon": (
        "aa3555cd27540ef74833be96d11411515748da10c5b499e5a86ded740a8da6f9",
        1.0991299784183504,
    ),
    "v_prediction": (
        "8dd0bd0652af99c2ff8551d23c6f06df87ee2cf0f7a274c7d2b0e431e6284f6d",
        0.45330876946449283,
    ),
}


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("prediction", sorted(PINNED))
def test_train_lora_is_pinned(prediction: str, model_dir: Path, tmp_path: Path) -> None:
    from diffusers import DDPMScheduler

    pipe = model_folder.load_pipeline(model_dir / "sd", "native", "float32", "cpu", 1)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction)
    spec = LoraTrainSpec(steps=3, rank=2, batch=2)
    out = tmp_path / "adapters" / "one.safetensors"
    trained = train_lora(
        pipe, [_png(1), _png(2), _png(3)], ["a digit 1", "the number one"], spec, 11, 32, 32, out
    )
    got = (trained.sha256, trained.final_loss)
    machines = (PINNED, PINNED_AVX512, PINNED_AVX2_EPYC)
    assert got in [pins[prediction] for pins in machines], got
    assert trained.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (trained.images, trained.steps, trained.path) == (3, 3, out)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert not list(out.parent.glob(".lora-*")), "no temporary folder left"


def test_train_lora_refuses_no_images(model_dir: Path, tmp_path: Path) -> None:
    pipe = model_folder.load_pipeline(model_dir / "sd", "native", "float32", "cpu", 1)
    with pytest.raises(ValueError, match="no real images"):
        train_lora(pipe, [], ["a"], LoraTrainSpec(steps=1), 0, 32, 32, tmp_path / "x.safetensors")
