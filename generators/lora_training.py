"""A small per-class LoRA fine-tuned on a class's few real images (`balance.adapt: lora`).

As diffusers' `train_text_to_image_lora` example does: the base model frozen, a peft
`LoraConfig` (Gaussian init, alpha = rank) on the UNet's attention projections (`to_q`,
`to_k`, `to_v`, `to_out.0`), epsilon / v-prediction MSE on VAE latents with the class's
prompts, AdamW. Everything random comes from one seed (LoRA init, batches, noise,
timesteps): on the CPU the same images, model and settings give the same adapter bytes (GPU
backward passes are not bitwise deterministic; there the hash recorded in the manifest is
what regeneration checks).
Saved with `save_lora_weights` as safetensors.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.recipe import LoraTrainSpec
from synthgen.storage.atomic import atomic_write
from synthgen.storage.hashing import file_sha256

logger = logging.getLogger(__name__)

TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")


@dataclass(frozen=True)
class TrainedLora:
    path: Path
    sha256: str
    images: int
    steps: int
    final_loss: float


def lora_seed(recipe_seed: int, class_name: str) -> int:
    digest = hashlib.sha256(f"synthgen-lora:{recipe_seed}:{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _pixels(images: Sequence[bytes], height: int, width: int) -> Any:
    """Encoded images -> float tensor (N, 3, H, W) in [-1, 1] at the generation size."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for data in images:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            out.append(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class _Encoded:
    """The frozen parts' outputs, computed once: each image's latent mean and std, each
    prompt's text-encoder hidden states, the VAE's latent scaling factor."""

    means: Any
    stds: Any
    hidden: Any
    scale: float


def _encode(
    pipe: Any, images: Sequence[bytes], prompts: Sequence[str], height: int, width: int
) -> _Encoded:
    import torch

    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
    device = pipe.unet.device
    pixels = _pixels(images, height, width).to(device, vae.dtype)
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        ids = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        hidden = text_encoder(ids.to(device))[0]
    return _Encoded(dist.mean, dist.std, hidden, float(vae.config.scaling_factor))


def _add_lora(unet: Any, spec: LoraTrainSpec, name: str) -> list[Any]:
    """The LoRA adapter `name` on the UNet's attention projections; its trainable weights
    (in float32 even on a float16 model, as diffusers' example)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.rank,
        init_lora_weights="gaussian",
        target_modules=list(TARGET_MODULES),
    )
    with warnings.catch_warnings():  # a pipe that trained an earlier class keeps peft_config
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(config, adapter_name=name)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def _fine_tune(
    unet: Any,
    noise_scheduler: Any,
    encoded: _Encoded,
    params: list[Any],
    spec: LoraTrainSpec,
    g: Any,
) -> float:
    """`spec.steps` AdamW steps of the denoising loss on random images, prompts, noise and
    timesteps (all drawn from `g` on the CPU, then moved); the loss's running mean."""
    import torch

    device, dtype = unet.device, unet.dtype
    opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=1e-2)
    prediction = noise_scheduler.config.prediction_type
    n_train = noise_scheduler.config.num_train_timesteps
    unet.train()
    running = 0.0
    for step in range(spec.steps):
        idx = torch.randint(0, len(encoded.means), (spec.batch,), generator=g)
        which = torch.randint(0, len(encoded.hidden), (spec.batch,), generator=g)
        mean, std = encoded.means[idx], encoded.stds[idx]
        eps = torch.randn(mean.shape, generator=g).to(device, mean.dtype)
        latents = ((mean + std * eps) * encoded.scale).to(dtype)
        noise = torch.randn(latents.shape, generator=g).to(device, dtype)
        t = torch.randint(0, n_train, (spec.batch,), generator=g).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = (
            noise_scheduler.get_velocity(latents, noise, t)
            if prediction == "v_prediction"
            else noise
        )
        pred = unet(noisy, t, encoder_hidden_states=encoded.hidden[which]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = float(loss.detach())
        running = 0.9 * running + 0.1 * value if step else value
    unet.eval()
    return running


def _save_lora(pipe: Any, name: str, out: Path) -> None:
    """The adapter's layers as diffusers' `save_lora_weights` writes them, to `out`
    (atomically)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(
        get_peft_model_state_dict(pipe.unet, adapter_name=name)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".lora-") as tmp:
        type(pipe).save_lora_weights(tmp, unet_lora_layers=layers, weight_name="lora.safetensors")
        data = (Path(tmp) / "lora.safetensors").read_bytes()
    with atomic_write(out) as f:
        f.write(data)


def train_lora(
    pipe: Any,
    images: Sequence[bytes],
    prompts: Sequence[str],
    spec: LoraTrainSpec,
    seed: int,
    height: int,
    width: int,
    out: Path,
) -> TrainedLora:
    """Fine-tune a LoRA on `pipe`'s UNet (left as it was) and save it to `out` (atomically).

    `pipe` is a loaded diffusers pipeline (its VAE, text encoder, tokenizer and scheduler are
    used frozen); `prompts` are drawn per image and step from the class's prompts.
    """
    import torch
    from diffusers import DDPMScheduler

    if not images:
        raise ValueError("no real images to train a LoRA on")
    torch.set_num_threads(spec.threads)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # peft's Gaussian LoRA init draws from the global generator
    unet = pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    encoded = _encode(pipe, images, prompts, height, width)
    for module in (pipe.vae, unet, pipe.text_encoder):
        module.requires_grad_(False)
    name = "synthgen_train"
    params = _add_lora(unet, spec, name)
    try:
        running = _fine_tune(unet, noise_scheduler, encoded, params, spec, g)
        _save_lora(pipe, name, out)
    finally:
        unet.delete_adapters(name)
        unet.requires_grad_(False)
    logger.info("trained LoRA %s on %d image(s): loss %.4f", out.name, len(images), running)
    return TrainedLora(out, file_sha256(out), len(images), spec.steps, running)


ADAPTERS_DIR = "adapters"


def training_key(
    recipe_hash: str,
    model_sha256: str,
    class_name: str,
    spec: LoraTrainSpec,
    images: Sequence[bytes],
) -> str:
    """What an adapter's bytes depend on: a trained one is reused only when this matches."""
    h = hashlib.sha256()
    for part in (recipe_hash, model_sha256, class_name, spec.model_dump_json()):
        h.update(part.encode() + b"\0")
    for data in images:
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def reusable(out_dir: Path, class_name: str, key: str) -> TrainedLora | None:
    """A finished adapter of an earlier run: its sidecar's key matches and its file's hash
    matches the sidecar (the sidecar is written after the file, so it marks it done)."""
    import json

    path = out_dir / ADAPTERS_DIR / f"{class_name}.safetensors"
    sidecar = path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("training_key") != key or not path.is_file():
        return None
    if file_sha256(path) != info.get("sha256"):
        return None
    return TrainedLora(
        path,
        str(info["sha256"]),
        int(info["images"]),
        int(info["steps"]),
        float(info["final_loss"]),
    )


def class_loras(
    out_dir: Path,
    load_pipe: Any,
    images_by_class: dict[str, list[bytes]],
    prompts_by_class: dict[str, list[str]],
    spec: LoraTrainSpec,
    recipe_seed: int,
    recipe_hash: str,
    model_sha256: str,
    height: int,
    width: int,
) -> dict[str, TrainedLora]:
    """One LoRA per class under `out_dir/adapters/`, reusing finished ones (resume).

    `load_pipe()` is called at most once, and only when some class needs training."""
    import json

    from synthgen.storage.atomic import write_bytes_atomic

    out: dict[str, TrainedLora] = {}
    pipe = None
    for name in sorted(images_by_class):
        images = images_by_class[name]
        key = training_key(recipe_hash, model_sha256, name, spec, images)
        done = reusable(out_dir, name, key)
        if done is not None:
            logger.info("reusing trained LoRA %s", done.path.name)
            out[name] = done
            continue
        if pipe is None:
            pipe = load_pipe()
        path = out_dir / ADAPTERS_DIR / f"{name}.safetensors"
        trained = train_lora(
            pipe,
            images,
            prompts_by_class[name],
            spec,
            lora_seed(recipe_seed, name),
            height,
            width,
            path,
        )
        sidecar = {
            "class": name,
            "training_key": key,
            "sha256": trained.sha256,
            "images": trained.images,
            "steps": trained.steps,
            "final_loss": trained.final_loss,
        }
        write_bytes_atomic(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
        out[name] = trained
    return out
