"""The moving-digits motion model: a `MotionAdapter` trained over the frozen digits UNet.

Clips are scikit-learn's digits (the default models' train split, rendered as
`data.to_images` renders them) swaying a pixel per frame along a seeded random direction,
within the ±`amplitude` pixels the image model was trained on (its one-pixel shift
augmentation), so every frame stays in the image model's domain. Training is AnimateDiff's:
the UNet's spatial weights and the text encoder are frozen, the motion modules (zero-initialised
output projections, so training starts from the image model) learn ε-prediction on the clips'
VAE latents, conditioned on the class captions the image model learned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.generators.training.data import CAPTION_TEMPLATES, caption, load_split, to_images
from synthgen.generators.training.diffusion import _shifted_latent_stats, cosine_lr

logger = logging.getLogger(__name__)

MOTION_DIR = "digits-motion"
BASE_DIR = "digits-ldm"
# (dy, dx) unit steps: the eight compass directions a clip's digit can sway along.
DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))

Report = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class MotionTrainConfig:
    """The motion adapter's architecture and schedule (seeded, CPU)."""

    frames: int = 8
    amplitude: int = 1  # pixels either side of the centre; the digit moves a pixel per frame
    heads: int = 4  # motion attention heads per block
    max_seq_length: int = 32  # longest clip the sinusoidal frame positions cover
    mid_block: bool = True
    steps: int = 900
    batch: int = 8  # clips per step
    lr: float = 2e-3
    warmup: int = 50
    caption_dropout: float = 0.1
    seed: int = 0
    threads: int = 1


def sway(frames: int, amplitude: int, phase: int) -> list[int]:
    """Positions along the direction, one per frame: a triangle wave over -amplitude..amplitude
    moving one pixel per frame (0, 1, 0, -1, ... for amplitude 1), starting `phase` steps in."""
    period = 4 * amplitude
    out = []
    for t in range(frames):
        k = (t + phase) % period
        if k <= amplitude:
            out.append(k)
        elif k <= 3 * amplitude:
            out.append(2 * amplitude - k)
        else:
            out.append(k - period)
    return out


def shift_index(dy: int, dx: int, amplitude: int) -> int:
    """Row of `(dy, dx)` in `_shifted_latent_stats`'s stack (padded crops, row-major)."""
    side = 2 * amplitude + 1
    return (dy + amplitude) * side + (dx + amplitude)


def clip_shifts(generator: Any, n: int, cfg: MotionTrainConfig) -> Any:
    """(n, frames) shift indices of n clips: a random direction and starting phase each."""
    import torch

    directions = torch.randint(0, len(DIRECTIONS), (n,), generator=generator).tolist()
    phases = torch.randint(0, 4 * cfg.amplitude, (n,), generator=generator).tolist()
    rows = []
    for d, p in zip(directions, phases, strict=True):
        dy, dx = DIRECTIONS[d]
        rows.append(
            [shift_index(s * dy, s * dx, cfg.amplitude) for s in sway(cfg.frames, cfg.amplitude, p)]
        )
    return torch.tensor(rows, dtype=torch.long)


def shifted(images: Any, index: int, amplitude: int) -> Any:
    """`images` (N, C, H, W) cropped from their zero-padded copy at shift row `index`: the
    same crops `_shifted_latent_stats` encodes."""
    import torch.nn.functional as F

    side = 2 * amplitude + 1
    dy, dx = divmod(index, side)
    _, _, h, w = images.shape
    return F.pad(images, (amplitude,) * 4)[:, :, dy : dy + h, dx : dx + w]


def moving_digits(
    x: np.ndarray, n: int, cfg: MotionTrainConfig, seed: int = 0
) -> tuple[Any, np.ndarray]:
    """n pixel clips (n, frames, 3, 16, 16) in [0, 1] of random digits from `x` (N, 64) and
    the chosen rows: what the motion model is trained on, as images."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(x), (n,), generator=g)
    images = to_images(x[rows.numpy()], 16)
    shifts = clip_shifts(g, n, cfg)
    frames = [
        torch.stack([shifted(images[i : i + 1], int(s), cfg.amplitude)[0] for s in shifts[i]])
        for i in range(n)
    ]
    return torch.stack(frames), rows.numpy()


def caption_table(text_encoder: Any, tokenizer: Any) -> Any:
    """Hidden states of every caption the image model learned, (10 * templates + 1, T, D):
    row `label * templates + template`, the last row the empty caption (guidance's negative)."""
    import torch

    texts = [caption(label, t) for label in range(10) for t in range(len(CAPTION_TEMPLATES))]
    ids = tokenizer(
        [*texts, ""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def build_adapter(unet: Any, cfg: MotionTrainConfig, seed: int) -> Any:
    """A seeded `MotionAdapter` matching `unet`'s blocks, its output projections zeroed."""
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter: Any = MotionAdapter(
        block_out_channels=tuple(unet.config.block_out_channels),
        motion_layers_per_block=unet.config.layers_per_block,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=cfg.heads,
        motion_norm_num_groups=unet.config.norm_num_groups,
        motion_max_seq_length=cfg.max_seq_length,
        use_motion_mid_block=cfg.mid_block,
    )
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return adapter


def copy_motion_modules(unet_motion: Any, adapter: Any) -> None:
    """Write the motion UNet's (trained) motion modules back into `adapter`."""
    for mine, theirs in zip(adapter.down_blocks, unet_motion.down_blocks, strict=True):
        mine.motion_modules.load_state_dict(theirs.motion_modules.state_dict())
    for mine, theirs in zip(adapter.up_blocks, unet_motion.up_blocks, strict=True):
        mine.motion_modules.load_state_dict(theirs.motion_modules.state_dict())
    if adapter.mid_block is not None:
        adapter.mid_block.motion_modules.load_state_dict(
            unet_motion.mid_block.motion_modules.state_dict()
        )


@dataclass(frozen=True)
class ClipLatents:
    """Everything a training step draws from: the frozen VAE's latents of every shift of
    every image, their labels, and the caption table."""

    means: Any  # (S, N, C, h, w)
    stds: Any
    labels: Any  # (N,) long
    captions: Any  # (10 * templates + 1, T, D)
    scale: float


def _clip_batch(g: Any, data: ClipLatents, cfg: MotionTrainConfig) -> tuple[Any, Any]:
    """One batch drawn from `g`: clip latents (B, C, F, h, w) sampled from the stored
    posteriors, and the caption states repeated per frame (B * F, T, D)."""
    import torch

    n_templates = len(CAPTION_TEMPLATES)
    idx = torch.randint(0, data.means.shape[1], (cfg.batch,), generator=g)
    shifts = clip_shifts(g, cfg.batch, cfg)
    mean, std = data.means[shifts, idx[:, None]], data.stds[shifts, idx[:, None]]
    latents = (mean + std * torch.randn(mean.shape, generator=g)) * data.scale
    templates = torch.randint(0, n_templates, (cfg.batch,), generator=g)
    drop = torch.rand(cfg.batch, generator=g) < cfg.caption_dropout
    rows = torch.where(drop, len(data.captions) - 1, data.labels[idx] * n_templates + templates)
    hidden = data.captions[rows].repeat_interleave(cfg.frames, dim=0)
    return latents.permute(0, 2, 1, 3, 4).contiguous(), hidden


def train_motion(
    unet_motion: Any, scheduler: Any, data: ClipLatents, cfg: MotionTrainConfig, report: Report
) -> float:
    """ε-prediction on clip latents, one timestep per clip; only the motion modules learn.
    Returns the final running loss."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed + 1)
    unet_motion.freeze_unet2d_params()
    params = [p for p in unet_motion.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    unet_motion.train()
    running = 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        latents, hidden = _clip_batch(g, data, cfg)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet_motion(noisy, t, encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
        report("motion", step + 1, cfg.steps, running)
    unet_motion.eval()
    return running


def _quiet(phase: str, step: int, total: int, loss: float) -> None:
    if step == total:
        logger.info("train %s: %d steps, loss %.4f", phase, total, loss)


def _clip_latents(base: Any, x: np.ndarray, y: np.ndarray, cfg: MotionTrainConfig) -> ClipLatents:
    """Encode every shift of every training digit once with the frozen VAE."""
    import torch

    size = base.unet.config.sample_size * base.vae_scale_factor
    images = to_images(x, size)
    means, stds = _shifted_latent_stats(base.vae, images, cfg.amplitude)
    return ClipLatents(
        means=means,
        stds=stds,
        labels=torch.tensor(np.asarray(y), dtype=torch.long),
        captions=caption_table(base.text_encoder, base.tokenizer),
        scale=float(base.vae.config.scaling_factor),
    )


def motion_pipeline(base: Any, adapter: Any) -> Any:
    """An `AnimateDiffPipeline` of the image pipeline's components and `adapter`, with a DDIM
    scheduler on the image model's noise schedule."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    return AnimateDiffPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        motion_adapter=adapter,
        scheduler=DDIMScheduler.from_config(base.scheduler.config),
    )


def train_motion_model(
    base_dir: Path, cfg: MotionTrainConfig, report: Report | None = None, limit: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train a motion adapter over the image pipeline at `base_dir` on the digits train split
    (its first `limit` digits when given); returns the AnimateDiffPipeline and its figures."""
    import torch
    from diffusers import StableDiffusionPipeline, UNetMotionModel

    torch.set_num_threads(cfg.threads)
    base = StableDiffusionPipeline.from_pretrained(str(base_dir), local_files_only=True)
    for module in (base.vae, base.text_encoder, base.unet):
        module.requires_grad_(False)
        module.eval()
    split = load_split()
    x, y = split.x_train[:limit], split.y_train[:limit]
    t0 = time.monotonic()
    data = _clip_latents(base, x, y, cfg)
    adapter = build_adapter(base.unet, cfg, cfg.seed)
    unet_motion = UNetMotionModel.from_unet2d(base.unet, adapter)
    loss = train_motion(unet_motion, base.scheduler, data, cfg, report or _quiet)
    copy_motion_modules(unet_motion, adapter)
    figures = {
        "motion_loss": loss,
        "motion_seconds": time.monotonic() - t0,
        "motion_parameters": sum(p.numel() for p in adapter.parameters()),
        "clips_seen": cfg.steps * cfg.batch,
        "train_digits": len(x),
    }
    return motion_pipeline(base, adapter), figures


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weight_digests(folder: Path) -> dict[str, str]:
    """sha256 of every safetensors file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*.safetensors"))}


def _summary(base_dir: Path, cfg: MotionTrainConfig, figures: dict[str, Any]) -> dict[str, Any]:
    """training.json: the base model's own record (its data and layout: the dataset card's
    rendering domain reads them) plus the motion training's config and figures."""
    import torch

    base = json.loads((base_dir / "training.json").read_text("utf-8"))
    return {
        "data": base["data"],
        "diffusion": base["diffusion"],
        "motion": {
            "clips": f"each a train-split digit swaying {cfg.amplitude} pixel(s) either side "
            f"along one of {len(DIRECTIONS)} directions, a pixel per frame, {cfg.frames} frames",
            "config": asdict(cfg),
            "figures": figures,
            "base": {"folder": base_dir.name, "weights_sha256": weight_digests(base_dir)},
        },
        "torch": torch.__version__,
    }


def train_motion_default(
    output: Path,
    base_dir: Path | None = None,
    cfg: MotionTrainConfig | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Train the motion adapter over `base_dir` (default `output/digits-ldm`) and save the
    AnimateDiffPipeline as `output/digits-motion` (safetensors), with training.json and a
    model card; returns the training summary."""
    from synthgen.generators.training.default_models import ProgressReport, _replace_dir

    cfg = cfg or MotionTrainConfig()
    base_dir = base_dir or output / BASE_DIR
    output.mkdir(parents=True, exist_ok=True)
    pipe, figures = train_motion_model(base_dir, cfg, ProgressReport(), limit)
    with tempfile.TemporaryDirectory(dir=output) as tmp_root:
        folder = Path(tmp_root) / MOTION_DIR
        pipe.save_pretrained(str(folder), safe_serialization=True)
        summary = _summary(base_dir, cfg, figures)
        summary["motion"]["weights_sha256"] = weight_digests(folder)
        (folder / "training.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (folder / "README.md").write_text(model_card(summary), encoding="utf-8")
        _replace_dir(folder, output / MOTION_DIR)
    return summary


def model_card(summary: dict[str, Any], quality: str | None = None) -> str:
    """The model folder's README.md: what it is, how it was trained, its weights' digests and
    (when given, as Markdown) its measured quality."""
    m = summary["motion"]
    cfg, fig = m["config"], m["figures"]
    digests = "\n".join(f"| `{k}` | `{v[:16]}` |" for k, v in m["weights_sha256"].items())
    base = "\n".join(f"| `{k}` | `{v[:16]}` |" for k, v in m["base"]["weights_sha256"].items())
    return f"""# digits-motion — synthgen's bundled text-to-video model

An `AnimateDiffPipeline`: the bundled image model (`models/{m["base"]["folder"]}`: its VAE, text
encoder, tokenizer and UNet, unchanged) with a `MotionAdapter` of {fig["motion_parameters"]:,}
parameters (one temporal transformer per UNet layer, {cfg["heads"]} heads, frame positions up
to {cfg["max_seq_length"]}) and a DDIM scheduler on the image model's noise schedule. It loads
with `diffusers.AnimateDiffPipeline.from_pretrained(path)` offline, safetensors only, and makes
16x16 clips of the digits 0-9, {cfg["frames"]} frames each.

## Data
{summary["data"]}. Clips: {m["clips"]}. Directions and starting phases are drawn from the
seeded generator; every frame is a one-pixel shift of the digit the image model was trained on.

## Objective and schedule (seed {cfg["seed"]}, torch threads: {cfg["threads"]})
AnimateDiff's: the UNet's spatial layers and the text encoder frozen; the motion modules, their
output projections zero-initialised (training starts from the image model), learn
ε-prediction on the clips' VAE latents (one timestep per clip), conditioned on the captions the
image model learned ({int(100 * cfg["caption_dropout"])}% dropped for classifier-free
guidance). {cfg["steps"]:,} steps at {cfg["batch"]} clips ({fig["clips_seen"]:,} clips), AdamW
lr {cfg["lr"]} cosine with {cfg["warmup"]} warm-up steps. Final loss {fig["motion_loss"]:.4f};
{fig["motion_seconds"] / 60:.1f} min of training, wall time (torch {summary["torch"]}).
{quality or ""}
## Regenerate
`synthgen.generators.training.motion.train_motion_default(Path("models"))` (it reads
`models/{m["base"]["folder"]}`); training is seeded, so the same library versions on the same
machine give the same weights (sha256, first 16 hex digits):

| file | sha256 |
|---|---|
{digests}

Base model weights it was trained over:

| file | sha256 |
|---|---|
{base}
"""
