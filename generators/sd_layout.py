"""Small Stable-Diffusion-layout pipelines built by our own code (no hub, no downloads).

The same `StableDiffusionPipeline` folder layout a real checkpoint has: AutoencoderKL, a CLIP
text encoder with a CLIPTokenizer, a cross-attention UNet2DConditionModel and a scheduler.
Used for test fixtures, the stand-in default model, and as the skeleton training fills in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SDLayoutConfig:
    """Architecture of a small SD-layout pipeline. Defaults give a ~1 M parameter model."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32)
    vae_norm_groups: int = 8
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_norm_groups: int = 8
    attention_head_dim: int = 8
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 64
    max_text_tokens: int = 16
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae_channels) - 1))

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor


def write_clip_tokenizer(folder: Path, max_length: int) -> None:
    """Write a transformers CLIPTokenizer (vocab.json + merges.txt) from open_clip's BPE file.

    open_clip ships CLIP's byte-level BPE vocabulary, so the tokenizer needs no download.
    """
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in tok.encoder.items()}
    merges = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for (a, b), _ in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_components(cfg: SDLayoutConfig, seed: int = 0) -> dict[str, Any]:
    """Randomly initialised components (seeded), ready for `StableDiffusionPipeline(**...)`."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    n_vae = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=cfg.image_size,
    )
    n_unet = len(cfg.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_unet - 1)
    up = ("CrossAttnUpBlock2D",) * (n_unet - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers_per_block,
        norm_num_groups=cfg.unet_norm_groups,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_head_dim,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_intermediate,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_text_tokens,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "scheduler": scheduler}


def assemble_pipeline(components: dict[str, Any], tokenizer_dir: Path) -> Any:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return StableDiffusionPipeline(
        **components,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe: Any, folder: Path, cfg: SDLayoutConfig) -> None:
    """Save as a standard diffusers folder (safetensors) plus our architecture config."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / "synthgen_layout.json").write_text(
        json.dumps(asdict(cfg), indent=2, sort_keys=True), encoding="utf-8"
    )


def make_random_pipeline(folder: Path, cfg: SDLayoutConfig | None = None, seed: int = 0) -> Path:
    """Build, seed and save a random SD-layout pipeline at `folder`; returns the folder."""
    import tempfile

    cfg = cfg or SDLayoutConfig()
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp), cfg.max_text_tokens)
        pipe = assemble_pipeline(build_components(cfg, seed), Path(tmp))
        save_pipeline(pipe, folder, cfg)
    return folder
