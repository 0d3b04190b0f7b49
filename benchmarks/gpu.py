"""GPU throughput and model-FLOP utilisation with a Stable-Diffusion-1.5-architecture pipeline.

    python benchmarks/gpu.py                # on an H100/H200 machine, about 5 minutes
    python benchmarks/gpu.py --tiny         # the same code path on CPU with a tiny model

The SD1.5 architecture (UNet 320/640/1280/1280 with cross-attention to 768-d text, the SD VAE,
a 12-layer CLIP text encoder) is built from its published configuration with random weights:
the architecture, not the weights, sets the cost, and nothing is downloaded. It is saved as a
normal diffusers folder (fp16 safetensors) and measured two ways, alternately:
- bare loop: `pipe(prompt=[...] * batch, generator=[...], output_type="np")` on the GPU;
- synthgen: full builds (generation, PNG encoding, CLIP scoring, checks, shards, validation)
  of two sizes; steady-state images/s = (N_large - N_small) / (t_large - t_small).
MFU counts UNet FLOPs only: about 0.80 TFLOP per image per evaluation at 512x512, doubled by
classifier-free guidance, times the steps, against the card's dense fp16 peak.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml

from synthgen.generators.clip_layout import make_random_clip
from synthgen.generators.sd_layout import SDLayoutConfig, make_random_pipeline, write_clip_tokenizer
from synthgen.pipelines.build import run_build

UNET_TFLOP_PER_EVAL_512 = 0.80
PEAK_FP16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def build_sd15(folder: Path, dtype: str) -> None:
    """SD1.5's published architecture with random (seeded) weights, saved as a diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    sched = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=False,
    )
    with tempfile.TemporaryDirectory() as tok:
        write_clip_tokenizer(Path(tok), 77)
        tokenizer = CLIPTokenizer.from_pretrained(tok, local_files_only=True)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(getattr(torch, dtype)).save_pretrained(str(folder), safe_serialization=True)


def bare_loop(folder: Path, cfg: dict, batches: int) -> float:
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    pipe = DiffusionPipeline.from_pretrained(
        str(folder), dtype=getattr(torch, cfg["dtype"]), use_safetensors=True, local_files_only=True
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(cfg["device"])
    b = cfg["batch"]

    def once(i: int) -> None:
        pipe(
            prompt=["a photo of a cat"] * b,
            negative_prompt=["blurry"] * b,
            num_inference_steps=cfg["steps"],
            guidance_scale=7.5,
            height=cfg["size"],
            width=cfg["size"],
            output_type="np",
            generator=[torch.Generator("cpu").manual_seed(i * b + j) for j in range(b)],
        )

    once(-1)  # warm-up
    _sync(cfg["device"])
    t0 = time.perf_counter()
    for i in range(batches):
        once(i)
    _sync(cfg["device"])
    return batches * b / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def recipe(tmp: Path, folder: Path, clip: Path, cfg: dict) -> Path:
    data = {
        "name": "gpu-bench",
        "model": {
            "path": str(folder),
            "dtype": cfg["dtype"],
            "device": cfg["device"],
            "compute_batch": cfg["batch"],
            "channels_last": cfg["device"] != "cpu",
        },
        "sampling": {
            "scheduler": "dpm-solver++",
            "steps": cfg["steps"],
            "guidance_scale": 7.5,
            "height": cfg["size"],
            "width": cfg["size"],
            "negative_prompt": "blurry",
        },
        "classes": [
            {"id": i, "name": n, "prompts": [f"a photo of a {n}"]}
            for i, n in enumerate(["cat", "dog", "car", "tree"])
        ],
        "count_per_class": 1,
        "scoring": {"clip_model": str(clip), "batch_size": cfg["batch"]},
        "checks": {"clip_score": None},
        "output": {"shard_size": 64, "png_compress_level": 1},
        "batch_size": cfg["batch"],
    }
    path = tmp / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def build_rate(recipe_path: Path, out: Path, small: int, large: int) -> tuple[float, str]:
    run_build(
        recipe_path, out / "warm-up", overrides=[f"count_per_class={small}"], show_progress=False
    )  # first-use costs (kernel selection, caches) stay out
    runs = []
    for n in (small, large):
        r = run_build(
            recipe_path, out / f"n{n}", overrides=[f"count_per_class={n}"], show_progress=False
        )
        runs.append((r.manifest["counts"]["planned"], r.seconds))
    (n1, t1), (n2, t2) = runs
    return (n2 - n1) / (t2 - t1), f"{n1} in {t1:.1f}s, {n2} in {t2:.1f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (a dry run)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.tiny:
        cfg = {
            "device": "cpu",
            "dtype": "float32",
            "batch": 4,
            "steps": 2,
            "size": 32,
            "bare_batches": 2,
            "small": 1,
            "large": 3,
        }
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --tiny for a CPU dry run")
            return 2
        cfg = {
            "device": "cuda",
            "dtype": "float16",
            "batch": 8,
            "steps": 25,
            "size": 512,
            "bare_batches": 6,
            "small": 4,
            "large": 16,
        }
    device_name = torch.cuda.get_device_name() if cfg["device"] == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        t0 = time.perf_counter()
        if args.tiny:
            make_random_pipeline(tmp / "sd", SDLayoutConfig(image_size=32))
        else:
            build_sd15(tmp / "sd", cfg["dtype"])
        clip_cfg = {
            "embed_dim": 256,
            "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 32},
            "text_cfg": {
                "context_length": 77,
                "vocab_size": 49408,
                "width": 256,
                "heads": 4,
                "layers": 4,
            },
        }
        make_random_clip(tmp / "clip", "bench-clip", clip_cfg)
        print(f"built models in {time.perf_counter() - t0:.0f}s")
        r = recipe(tmp, tmp / "sd", tmp / "clip", cfg)
        bare, pipe = [], []
        for i in range(args.repeats):
            bare.append(bare_loop(tmp / "sd", cfg, cfg["bare_batches"]))
            rate, detail = build_rate(r, tmp / f"out{i}", cfg["small"], cfg["large"])
            pipe.append(rate)
            print(f"bare {bare[-1]:.2f} img/s | synthgen steady state {rate:.2f} img/s ({detail})")
    b, p = statistics.median(bare), statistics.median(pipe)
    flop = UNET_TFLOP_PER_EVAL_512 * (cfg["size"] / 512) ** 2 * 2 * cfg["steps"]
    peak = next((v for k, v in PEAK_FP16_TFLOPS.items() if k in device_name), None)
    figures = {
        "device": device_name,
        "batch": cfg["batch"],
        "steps": cfg["steps"],
        "resolution": cfg["size"],
        "bare_images_per_s": b,
        "pipeline_images_per_s": p,
        "ratio": p / b,
    }
    if peak:
        figures["mfu_bare"] = b * flop / peak
        figures["mfu_pipeline"] = p * flop / peak
    print(json.dumps(figures, indent=2))
    print(f"pipeline / bare = {p / b:.3f} (target >= 0.90)")
    if peak:
        print(
            f"MFU (UNet only, fp16 dense peak {peak:.0f} TFLOP/s): bare "
            f"{figures['mfu_bare']:.1%}, pipeline {figures['mfu_pipeline']:.1%} (target >= 35%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
