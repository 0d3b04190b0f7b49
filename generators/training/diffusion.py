"""Training the default latent diffusion model: VAE first, then text encoder + UNet together."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthgen.generators.sd_layout import SDLayoutConfig, build_components
from synthgen.generators.training.data import caption, random_shift

logger = logging.getLogger(__name__)

Report = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class DiffusionTrainConfig:
    layout: SDLayoutConfig
    vae_steps: int = 1200
    vae_batch: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to zero: the schedule every default model trains with."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))


def train_vae(vae: Any, images: Any, cfg: DiffusionTrainConfig, report: Report) -> float:
    """Reconstruction + small KL on [-1, 1] images; returns the final reconstruction MSE."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    recon = 0.0
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.vae_steps, cfg.vae_lr)
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=g)
        x = random_shift(images[idx], g) * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=g)
        out = vae.decode(z).sample
        loss_rec = torch.nn.functional.mse_loss(out, x)
        loss = loss_rec + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recon = 0.98 * recon + 0.02 * float(loss_rec.detach()) if step else float(loss_rec.detach())
        report("vae", step + 1, cfg.vae_steps, recon)
    vae.eval()
    return recon


def latent_scale(vae: Any, images: Any) -> float:
    """1 / std of the latents, as Stable Diffusion's `scaling_factor`."""
    import torch

    with torch.no_grad():
        z = vae.encode(images * 2 - 1).latent_dist.mean
    return float(1.0 / z.std())


def _shifted_latent_stats(vae: Any, images: Any, max_shift: int = 1) -> tuple[Any, Any]:
    """Latent mean/std of each image under each shift: (S, N, C, h, w) tensors."""
    import torch
    import torch.nn.functional as F

    _, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    means, stds = [], []
    with torch.no_grad():
        for dy in range(2 * max_shift + 1):
            for dx in range(2 * max_shift + 1):
                x = padded[:, :, dy : dy + h, dx : dx + w] * 2 - 1
                dist = vae.encode(x).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
    return torch.stack(means), torch.stack(stds)


def _caption_batch(
    g: Any,
    means: Any,
    stds: Any,
    n_images: int,
    labels: np.ndarray,
    tokenizer: Any,
    cfg: DiffusionTrainConfig,
    scale: float,
) -> tuple[Any, Any]:
    """One training batch drawn from `g`: random images under random shifts, their latents
    sampled from the stored mean/std, and their token ids (a random caption template each,
    dropped to "" with `cfg.caption_dropout`)."""
    import torch

    idx = torch.randint(0, n_images, (cfg.unet_batch,), generator=g)
    shift = torch.randint(0, len(means), (cfg.unet_batch,), generator=g)
    mean, std = means[shift, idx], stds[shift, idx]
    latents = (mean + std * torch.randn(mean.shape, generator=g)) * scale
    templates = torch.randint(0, 1000, (cfg.unet_batch,), generator=g).tolist()
    drop = torch.rand(cfg.unet_batch, generator=g) < cfg.caption_dropout
    captions = [
        "" if d else caption(int(labels[i]), t)
        for i, t, d in zip(idx.tolist(), templates, drop.tolist(), strict=True)
    ]
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return latents, ids


def _target(scheduler: Any, latents: Any, noise: Any, t: Any) -> Any:
    """What the UNet learns to predict: the noise, or the velocity for v-prediction."""
    if scheduler.config.prediction_type == "v_prediction":
        alphas = scheduler.alphas_cumprod
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        return a * noise - s * latents
    return noise


def train_unet_and_text(
    components: dict[str, Any],
    tokenizer: Any,
    images: Any,
    labels: np.ndarray,
    cfg: DiffusionTrainConfig,
    report: Report,
) -> float:
    """ε-prediction on VAE latents with caption dropout (for classifier-free guidance)."""
    import torch
    from diffusers.training_utils import EMAModel

    vae, unet, text_encoder = components["vae"], components["unet"], components["text_encoder"]
    scheduler = components["scheduler"]
    g = torch.Generator().manual_seed(cfg.seed + 1)
    # The VAE is frozen: encode every one-pixel shift of every image once, sample per step.
    means, stds = _shifted_latent_stats(vae, images)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay)
    unet.train()
    text_encoder.train()
    running = 0.0
    for step in range(cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.unet_steps, cfg.unet_lr)
        latents, ids = _caption_batch(
            g, means, stds, len(images), labels, tokenizer, cfg, vae.config.scaling_factor
        )
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        target = _target(scheduler, latents, noise, t)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
        report("unet", step + 1, cfg.unet_steps, running)
    ema.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    unet.eval()
    text_encoder.eval()
    return running


def train_diffusion(
    cfg: DiffusionTrainConfig, images: Any, labels: np.ndarray, tokenizer: Any, report: Report
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train all components; returns them and training figures for the model card."""
    import torch

    torch.manual_seed(cfg.seed)
    components = build_components(cfg.layout, seed=cfg.seed)
    t0 = time.monotonic()
    recon = train_vae(components["vae"], images, cfg, report)
    t_vae = time.monotonic() - t0
    components["vae"].register_to_config(scaling_factor=latent_scale(components["vae"], images))
    for p in components["vae"].parameters():
        p.requires_grad_(False)
    t1 = time.monotonic()
    loss = train_unet_and_text(components, tokenizer, images, labels, cfg, report)
    figures = {
        "vae_recon_mse": recon,
        "vae_seconds": t_vae,
        "unet_loss": loss,
        "unet_seconds": time.monotonic() - t1,
        "latent_scaling_factor": float(components["vae"].config.scaling_factor),
    }
    return components, figures
