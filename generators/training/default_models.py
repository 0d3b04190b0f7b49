"""`synthgen train-default`: train and save the bundled digits models (seeded, CPU, offline)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from synthgen.generators.sd_layout import SDLayoutConfig, assemble_pipeline, save_pipeline
from synthgen.generators.training.clip import ClipTrainConfig, train_clip, zero_shot
from synthgen.generators.training.data import DigitsSplit, load_split, to_images
from synthgen.generators.training.diffusion import DiffusionTrainConfig, train_diffusion

logger = logging.getLogger(__name__)

LDM_DIR = "digits-ldm"
CLIP_DIR = "digits-clip"

DIGITS_LAYOUT = SDLayoutConfig(
    image_size=16,
    vae_channels=(16, 32),
    vae_norm_groups=8,
    latent_channels=4,
    unet_channels=(32, 64),
    unet_layers_per_block=1,
    unet_norm_groups=8,
    attention_head_dim=8,
    text_hidden=32,
    text_layers=2,
    text_heads=4,
    text_intermediate=64,
    max_text_tokens=16,
    prediction_type="epsilon",
)


@dataclass(frozen=True)
class DefaultModelsConfig:
    diffusion: DiffusionTrainConfig = field(
        default_factory=lambda: DiffusionTrainConfig(layout=DIGITS_LAYOUT)
    )
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    threads: int = 2


def quick_config(steps: int = 3) -> DefaultModelsConfig:
    """A few steps of each phase on a much smaller architecture: for tests."""
    small = replace(
        DIGITS_LAYOUT,
        vae_channels=(8, 16),
        vae_norm_groups=4,
        unet_channels=(16, 32),
        unet_norm_groups=4,
        attention_head_dim=8,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
        text_intermediate=32,
    )
    clip_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 16,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 4,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 16,
            "heads": 1,
            "layers": 1,
        },
    }
    return DefaultModelsConfig(
        diffusion=DiffusionTrainConfig(
            layout=small, vae_steps=steps, vae_batch=8, unet_steps=steps, unet_batch=8
        ),
        clip=ClipTrainConfig(config=clip_cfg, steps=steps, batch=16),
    )


class ProgressReport:
    """A training progress line: live on a terminal, every 10% in logs otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._start = time.monotonic()
        self._last_pct = -1

    def __call__(self, phase: str, step: int, total: int, loss: float) -> None:
        pct = int(100 * step / total)
        text = (
            f"{phase}: step {step}/{total} loss {loss:.4f} ({time.monotonic() - self._start:.0f}s)"
        )
        if self._tty:
            sys.stderr.write("\r" + text + ("\n" if step == total else ""))
        elif pct // 10 != self._last_pct // 10 or step == total:
            logger.info("train %s", text)
        self._last_pct = pct


def _replace_dir(tmp: Path, final: Path) -> None:
    """Publish a finished model folder: the old one is removed only once the new one exists."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _train_ldm(
    cfg: DefaultModelsConfig, split: DigitsSplit, tmp: Path, report: ProgressReport
) -> dict[str, Any]:
    """Phase 1: the VAE, then text encoder + UNet, assembled as a StableDiffusionPipeline
    and saved under `tmp`; returns the training figures."""
    from transformers import CLIPTokenizer

    from synthgen.generators.sd_layout import write_clip_tokenizer

    layout = cfg.diffusion.layout
    images = to_images(split.x_train, layout.image_size)
    write_clip_tokenizer(tmp / "tok", layout.max_text_tokens)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp / "tok"), local_files_only=True)
    components, figures = train_diffusion(cfg.diffusion, images, split.y_train, tokenizer, report)
    pipe = assemble_pipeline(components, tmp / "tok")
    save_pipeline(pipe, tmp / LDM_DIR, layout)
    return figures


def _train_default_clip(
    cfg: ClipTrainConfig, split: DigitsSplit, tmp: Path, report: ProgressReport
) -> tuple[float, dict[str, float]]:
    """Phase 2: CLIP from our own config JSON (registered with open_clip), trained, saved
    under `tmp` and scored zero-shot on the test split; returns its final loss and the
    test-split figures."""
    import open_clip
    import torch

    from synthgen.generators.clip_layout import build_clip, save_clip

    torch.manual_seed(cfg.seed)
    clip_model = build_clip(cfg.name, cfg.config, tmp / CLIP_DIR)
    clip_tok = open_clip.get_tokenizer(cfg.name)
    size = cfg.config["vision_cfg"]["image_size"]
    clip_images = to_images(split.x_train, size)
    clip_loss = train_clip(clip_model, clip_tok, clip_images, split.y_train, cfg, report)
    save_clip(clip_model, cfg.name, tmp / CLIP_DIR)
    test_images = to_images(split.x_test, size)
    return clip_loss, zero_shot(clip_model, clip_tok, test_images, split.y_test)


def train_default(output: Path, cfg: DefaultModelsConfig | None = None) -> dict[str, Any]:
    """Train both models on the digits train split and save them under `output`."""
    import torch

    cfg = cfg or DefaultModelsConfig()
    torch.set_num_threads(cfg.threads)
    output.mkdir(parents=True, exist_ok=True)
    split = load_split()
    report = ProgressReport()
    t0 = time.monotonic()

    with tempfile.TemporaryDirectory(dir=output) as tmp_root:
        tmp = Path(tmp_root)
        diffusion_figures = _train_ldm(cfg, split, tmp, report)
        t_diffusion = time.monotonic() - t0
        t1 = time.monotonic()
        clip_loss, clip_metrics = _train_default_clip(cfg.clip, split, tmp, report)
        t_clip = time.monotonic() - t1
        summary = {
            "data": "scikit-learn load_digits; train_test_split(test_size=0.25, random_state=0, "
            "stratify=y); trained on the 1347-image train split only",
            "diffusion": {
                "config": json.loads(json.dumps(asdict(cfg.diffusion), default=str)),
                "figures": diffusion_figures,
                "wall_seconds": t_diffusion,
            },
            "clip": {
                "name": cfg.clip.name,
                "config": cfg.clip.config,
                "steps": cfg.clip.steps,
                "batch": cfg.clip.batch,
                "final_loss": clip_loss,
                "test_split": clip_metrics,
                "wall_seconds": t_clip,
            },
            "threads": cfg.threads,
            "torch": torch.__version__,
        }
        for name in (LDM_DIR, CLIP_DIR):
            (tmp / name / "training.json").write_text(json.dumps(summary, indent=2))
        _replace_dir(tmp / LDM_DIR, output / LDM_DIR)
        _replace_dir(tmp / CLIP_DIR, output / CLIP_DIR)
    logger.info(
        "trained default models in %.0fs: CLIP zero-shot accuracy %.3f on the test split",
        time.monotonic() - t0,
        clip_metrics["zero_shot_accuracy"],
    )
    return summary
