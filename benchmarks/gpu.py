"""GPU throughput and model-FLOP utilisation for SD1.5, SDXL and Flux-schnell architectures.

    python benchmarks/gpu.py                      # all three on an H100/H200 machine
    python benchmarks/gpu.py --arch sdxl          # one of sd15, sdxl, flux-schnell
    python benchmarks/gpu.py --tiny               # every architecture's code path on CPU

Each architecture is built from its published configuration with random weights (the
architecture, not the weights, sets the cost; nothing is downloaded), saved as a normal
diffusers folder (safetensors) and measured two ways, alternately:
- bare loop: `pipe(prompt=[...] * batch, generator=[...], output_type="np")` on the GPU;
- synthgen: full builds (generation, PNG encoding, CLIP scoring, checks, shards, validation)
  of two sizes; steady-state images/s = (N_large - N_small) / (t_large - t_small).
SD1.5 at 512x512 (25 steps, fp16), SDXL at 1024x1024 (30 steps, fp16), Flux-schnell at
1024x1024 (4 steps, bf16, no classifier-free guidance). MFU counts denoiser (UNet or
transformer) FLOPs only, counted by torch's FlopCounterMode over one whole single-image call
(`call_flops`: every step and CFG evaluation, per component), against the card's dense
16-bit peak. `--channels-last` and `--compile` apply to both sides alike; the steady state
is measured over builds ten batches apart; a build with a failed sample stops the run.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml

from synthgen.generators.clip_layout import make_random_clip
from synthgen.generators.sd_layout import write_clip_tokenizer
from synthgen.pipelines.build import run_build

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


def build_sdxl(folder: Path, dtype: str) -> None:
    """SDXL base's published architecture (UNet 320/640/1280, CLIP-L + OpenCLIP-bigG)."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(_build_device()):
        unet = UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = _sd_vae(latent=4, scaling=0.13025)
        text = CLIPTextModel(_clip_text_config(768, 12, 12, 3072, "quick_gelu"))
        text_2 = CLIPTextModelWithProjection(
            _clip_text_config(1280, 32, 20, 5120, "gelu", projection_dim=1280)
        )
    tok = _clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
    )
    pipe.to(getattr(torch, dtype)).save_pretrained(str(folder), safe_serialization=True)


def build_flux_schnell(folder: Path, dtype: str) -> None:
    """Flux.1-schnell's published architecture (19 + 38 blocks, T5-XXL + CLIP-L), random."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from synthgen.generators.random_pipelines import write_t5_tokenizer

    torch.manual_seed(0)
    with torch.device(_build_device()):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
        ).to(getattr(torch, dtype))
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_ff=10240,
                d_kv=64,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                is_gated_act=True,
            )
        ).to(getattr(torch, dtype))
        text = CLIPTextModel(_clip_text_config(768, 12, 12, 3072, "quick_gelu"))
        vae = _sd_vae(latent=16, scaling=0.3611, shift=0.1159)
    with tempfile.TemporaryDirectory() as tok:
        write_t5_tokenizer(Path(tok))
        from transformers import T5Tokenizer

        t5_tok = T5Tokenizer.from_pretrained(tok, local_files_only=True)
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=text,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
    )
    pipe.to(getattr(torch, dtype)).save_pretrained(str(folder), safe_serialization=True)


def _build_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sd_vae(latent: int, scaling: float, shift: float | None = None) -> Any:
    from diffusers import AutoencoderKL

    extra: dict[str, Any] = {}
    if shift is not None:
        extra = {"shift_factor": shift, "use_quant_conv": False, "use_post_quant_conv": False}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent,
        layers_per_block=2,
        sample_size=1024,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling,
        **extra,
    )


def _clip_text_config(
    hidden: int, layers: int, heads: int, inter: int, act: str, projection_dim: int = 768
) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tok:
        write_clip_tokenizer(Path(tok), 77)
        return CLIPTokenizer.from_pretrained(tok, local_files_only=True)


@dataclass(frozen=True)
class Arch:
    """One benchmarked architecture: how to build it, and how it is sampled."""

    name: str
    build: Callable[[Path, str], None]
    tiny_family: str  # the random_pipelines family with the same code path, for --tiny
    dtype: str
    size: int
    steps: int
    batch: int
    scheduler: str  # recipe sampler name
    guidance: float  # > 1: classifier-free guidance (two denoiser evaluations per step)
    negative: bool


ARCHS = {
    a.name: a
    for a in (
        Arch("sd15", build_sd15, "sd", "float16", 512, 25, 8, "dpm-solver++", 7.5, True),
        Arch("sdxl", build_sdxl, "sdxl", "float16", 1024, 30, 4, "native", 5.0, True),
        Arch(
            "flux-schnell", build_flux_schnell, "flux", "bfloat16", 1024, 4, 2, "native", 0.0, False
        ),
    )
}


def call_flops(pipe: Any, kwargs: dict[str, Any]) -> dict[str, int]:
    """FLOPs of one whole pipeline call, per component (unet / transformer, text encoders,
    vae, ...), counted by one FlopCounterMode entered once around the call.

    (Entering a FlopCounterMode resets its counts: one entered per denoiser forward keeps
    only the last forward, 1 / (steps x CFG) of the work.)
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    components = {
        name: module
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    counter = FlopCounterMode(display=False, depth=1)
    with counter:
        pipe(**kwargs)
    # top-level entries are named after the module whose forward ran: a component called
    # through its forward (unet, text encoders) by its class; the VAE's `decode` by its
    # children's classes (Decoder, Conv2d)
    top = {
        name: int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items()
        if "." not in name and name != "Global"
    }
    out = {}
    for name, module in components.items():
        own = type(module).__name__
        if own in top:
            out[name] = top[own]
        else:
            children = {type(c).__name__ for c in module.children()}
            out[name] = sum(top.get(c, 0) for c in children)
    out["total"] = int(counter.get_total_flops())
    return out


def denoiser_tflop_per_image(folder: Path, arch: Arch, device: str, size: int, steps: int) -> float:
    """Denoiser TFLOP per image: one single-image call at the benchmark's size and steps,
    counted over the whole call (every step, CFG included)."""
    from synthgen.generators.families import FAMILIES
    from synthgen.generators.model_folder import load_pipeline

    pipe = load_pipeline(folder, "native", arch_dtype(arch, device), device, 1)
    denoiser = FAMILIES[type(pipe).__name__].denoiser
    flops = call_flops(pipe, _call(arch, 1, size, steps, 0))
    del pipe
    return flops[denoiser] / 1e12


def arch_dtype(arch: Arch, device: str) -> str:
    return arch.dtype if device.startswith("cuda") else "float32"


def _call(arch: Arch, b: int, size: int, steps: int, i: int) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = {
        "prompt": ["a photo of a cat"] * b,
        "num_inference_steps": steps,
        "guidance_scale": arch.guidance,
        "height": size,
        "width": size,
        "output_type": "np",
        "generator": [torch.Generator("cpu").manual_seed(i * b + j) for j in range(b)],
    }
    if arch.negative:
        kwargs["negative_prompt"] = ["blurry"] * b
    return kwargs


def bare_loop(folder: Path, arch: Arch, cfg: dict, batches: int) -> float:
    import torch
    from diffusers import DiffusionPipeline

    from synthgen.generators.model_folder import make_scheduler

    pipe = DiffusionPipeline.from_pretrained(
        str(folder), dtype=getattr(torch, cfg["dtype"]), use_safetensors=True, local_files_only=True
    )
    if arch.scheduler != "native":
        pipe.scheduler = make_scheduler(arch.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(cfg["device"])
    if cfg["channels_last"]:  # the same options as the build's recipe (`optimize_for_device`)
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        denoiser.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if cfg["compile"]:
        name = "unet" if hasattr(pipe, "unet") else "transformer"
        setattr(pipe, name, torch.compile(getattr(pipe, name), mode="max-autotune-no-cudagraphs"))
    b = cfg["batch"]

    def once(i: int) -> None:
        pipe(**_call(arch, b, cfg["size"], cfg["steps"], i))

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


def recipe(tmp: Path, folder: Path, clip: Path, arch: Arch, cfg: dict) -> Path:
    data = {
        "name": "gpu-bench",
        "model": {
            "path": str(folder),
            "dtype": cfg["dtype"],
            "device": cfg["device"],
            "compute_batch": cfg["batch"],
            "channels_last": cfg["channels_last"],
            "compile": cfg["compile"],
        },
        "sampling": {
            "scheduler": arch.scheduler,
            "steps": cfg["steps"],
            "guidance_scale": arch.guidance,
            "height": cfg["size"],
            "width": cfg["size"],
            "negative_prompt": "blurry" if arch.negative else "",
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
    path = tmp / f"gpu-{arch.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def build_rate(recipe_path: Path, out: Path, small: int, large: int) -> tuple[float, str]:
    """Steady-state images/s of full builds: (N_large - N_small) / (t_large - t_small), the
    two builds `small` and `large` images per class apart (at least ten batches). A build
    with a failed sample stops the benchmark: its rate would mislead."""
    run_build(
        recipe_path, out / "warm-up", overrides=[f"count_per_class={small}"], show_progress=False
    )  # first-use costs (kernel selection, caches) stay out
    runs = []
    for n in (small, large):
        r = run_build(
            recipe_path, out / f"n{n}", overrides=[f"count_per_class={n}"], show_progress=False
        )
        if r.manifest.counts.failed:
            raise SystemExit(f"{recipe_path.name}: {r.manifest.counts.failed} samples failed")
        runs.append((r.manifest.counts.planned, r.seconds))
    (n1, t1), (n2, t2) = runs
    return (n2 - n1) / (t2 - t1), f"{n1} in {t1:.1f}s, {n2} in {t2:.1f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (a dry run)")
    parser.add_argument("--arch", choices=[*ARCHS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="on both sides")
    parser.add_argument("--compile", action="store_true", help="torch.compile, both sides")
    args = parser.parse_args()
    options = Options(args.channels_last, args.compile)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for a CPU dry run")
        return 2
    results = []
    for arch in ARCHS.values() if args.arch == "all" else [ARCHS[args.arch]]:
        results.append(measure(arch, args.tiny, args.repeats, options))
    print(json.dumps(results, indent=2))
    return 0


@dataclass(frozen=True)
class Options:
    """GPU options, applied identically to the bare loop and to the build's recipe."""

    channels_last: bool = False
    compile: bool = False


def measure(arch: Arch, tiny: bool, repeats: int, options: Options = Options()) -> dict[str, Any]:
    import torch

    from synthgen.generators.random_pipelines import save_snapshot

    # builds of 4 classes: `small` / `large` images per class; `large` is ten batches more
    if tiny:
        cfg = {"device": "cpu", "dtype": "float32", "batch": 2, "steps": 2, "size": 32}
        cfg |= {"bare_batches": 10, "small": 1, "large": 6}
    else:
        cfg = {"device": "cuda", "dtype": arch.dtype, "batch": arch.batch, "steps": arch.steps}
        per_class = arch.batch // 4 or 1
        cfg |= {"size": arch.size, "bare_batches": 10, "small": 2 * per_class}
        cfg["large"] = cfg["small"] + 10 * arch.batch // 4
    cfg |= {"channels_last": options.channels_last, "compile": options.compile}
    device_name = torch.cuda.get_device_name() if cfg["device"] == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        t0 = time.perf_counter()
        if tiny:
            save_snapshot(arch.tiny_family, tmp / "model")
        else:
            arch.build(tmp / "model", cfg["dtype"])
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
        print(f"{arch.name}: built models in {time.perf_counter() - t0:.0f}s")
        tflop = denoiser_tflop_per_image(
            tmp / "model", arch, cfg["device"], cfg["size"], cfg["steps"]
        )
        r = recipe(tmp, tmp / "model", tmp / "clip", arch, cfg)
        bare, pipe = [], []
        for i in range(repeats):
            bare.append(bare_loop(tmp / "model", arch, cfg, cfg["bare_batches"]))
            rate, detail = build_rate(r, tmp / f"out{i}", cfg["small"], cfg["large"])
            pipe.append(rate)
            print(
                f"{arch.name}: bare {bare[-1]:.2f} img/s | synthgen steady state "
                f"{rate:.2f} img/s ({detail})"
            )
    b, p = statistics.median(bare), statistics.median(pipe)
    peak = next((v for k, v in PEAK_FP16_TFLOPS.items() if k in device_name), None)
    figures: dict[str, Any] = {
        "arch": arch.name,
        "device": device_name,
        "dtype": cfg["dtype"],
        "batch": cfg["batch"],
        "steps": cfg["steps"],
        "resolution": cfg["size"],
        "denoiser_tflop_per_image": tflop,
        "bare_images_per_s": b,
        "pipeline_images_per_s": p,
        "ratio": p / b,
        "channels_last": options.channels_last,
        "compile": options.compile,
    }
    if peak:
        figures["mfu_bare"] = b * tflop / peak
        figures["mfu_pipeline"] = p * tflop / peak
    print(f"{arch.name}: pipeline / bare = {p / b:.3f} (target >= 0.90)")
    return figures


if __name__ == "__main__":
    sys.exit(main())
