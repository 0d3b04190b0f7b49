"""Random-weight pipelines of every supported family, built offline (no hub, no downloads).

Each builder makes the components the way diffusers' own fast tests do (`get_dummy_components`)
and returns an assembled pipeline; `save_snapshot` writes it as a standard diffusers folder
(safetensors only). Sizes are parameters: tests use tiny ones, benchmarks the published ones.
The tokenizers are made here too: CLIP's from open_clip's bundled BPE vocabulary
(`sd_layout.write_clip_tokenizer`), T5's and Gemma's trained on a few words with the
`tokenizers` library. Few-step students are here as well: an LCM-distilled SD
(`LatentConsistencyModelPipeline`, guidance embedded in the UNet), SD with an LCM scheduler,
SANA and SANA-Sprint (Gemma 2 text encoder, DC-AE, sCM scheduler) and PixArt-α. The
text-to-video families are here too: Wan 2.1, LTX-Video and CogVideoX (a T5 text encoder, a
3-D VAE, a video transformer) and AnimateDiff (an SD 1.x UNet with a `MotionAdapter`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.generators.sd_layout import write_clip_tokenizer

__all__ = [
    "BUILDERS",
    "VIDEO_BUILDERS",
    "TinySizes",
    "build_animatediff",
    "build_cogvideox",
    "build_flux",
    "build_lcm",
    "build_ltx",
    "build_pixart_alpha",
    "build_pixart_sigma",
    "build_sana",
    "build_sana_sprint",
    "build_sd",
    "build_sd3",
    "build_sd_lcm",
    "build_sdxl",
    "build_wan",
    "save_snapshot",
    "write_gemma_tokenizer",
    "write_t5_tokenizer",
]

GEMMA_VOCAB = 96
_T5_WORDS = (
    "a an the of photo picture handwritten digit number zero one two three four five six "
    "seven eight nine cat dog car tree red green blue blurry sharp 0 1 2 3 4 5 6 7 8 9 "
    "abcdefghijklmnopqrstuvwxyz"
)


@dataclass(frozen=True)
class TinySizes:
    """Widths shared by the tiny builders (diffusers' test sizes)."""

    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    max_text_tokens: int = 77
    t5_vocab: int = 128


def write_t5_tokenizer(folder: Path) -> None:
    """A tiny T5 tokenizer (`tokenizer.json` only) trained offline on a fixed word list."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=96, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator([_T5_WORDS] * 8, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    wrapped = T5Tokenizer(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )
    wrapped.save_pretrained(str(folder))


def write_gemma_tokenizer(folder: Path) -> None:
    """A tiny Gemma tokenizer (`tokenizer.json` only, BPE) trained offline on a fixed word list."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = BpeTrainer(vocab_size=GEMMA_VOCAB, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([_T5_WORDS] * 8, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    wrapped = GemmaTokenizer(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
    )
    wrapped.save_pretrained(str(folder))


def _clip_tokenizer(max_length: int) -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp), max_length)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def _t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_t5_tokenizer(Path(tmp))
        return T5Tokenizer.from_pretrained(tmp, local_files_only=True)


def _gemma_tokenizer() -> Any:
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_gemma_tokenizer(Path(tmp))
        return GemmaTokenizer.from_pretrained(tmp, local_files_only=True)


def _clip_text(s: TinySizes, projection: bool = False, projection_dim: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=s.text_hidden,
        intermediate_size=37,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        max_position_embeddings=s.max_text_tokens,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(s: TinySizes, d_model: int = 32) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=s.t5_vocab,
            d_model=d_model,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _vae(blocks: tuple[int, ...], latent: int, flow: bool = False) -> Any:
    from diffusers import AutoencoderKL

    extra: dict[str, Any] = {}
    if flow:  # SD3 / Flux VAEs: no quant convs, shifted latents
        extra = dict(
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=latent,
        norm_num_groups=1 if flow else min(blocks[0], 4),
        sample_size=32,
        **extra,
    )


def tiny_clip_config(projection_dim: int = 16) -> Any:
    """A tiny transformers `CLIPConfig` (32x32 images, width 16): the safety checker's
    backbone and, in tests, a transformers `CLIPModel` folder."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )


def tiny_image_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _tiny_safety_checker() -> tuple[Any, Any]:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    config = tiny_clip_config()
    return StableDiffusionSafetyChecker(config).eval(), tiny_image_processor()


def build_sd(
    prediction_type: str = "epsilon", safety_checker: bool = True, s: TinySizes = TinySizes()
) -> Any:
    """Stable Diffusion 1.x/2.x (`StableDiffusionPipeline`), optionally with its safety checker."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    unet = _sd_unet(s)
    # A stock SD 1.5 snapshot ships PNDM; SD 2.x (v-prediction) DDIM-style configs.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    checker, extractor = _tiny_safety_checker() if safety_checker else (None, None)
    return StableDiffusionPipeline(
        vae=_vae((8, 16), 4),
        text_encoder=_clip_text(s),
        tokenizer=_clip_tokenizer(s.max_text_tokens),
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=safety_checker,
    )


def build_sdxl(s: TinySizes = TinySizes()) -> Any:
    """SDXL (`StableDiffusionXLPipeline`): two CLIP encoders, pooled embeds, size conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    proj = 32
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=8 * 6 + proj,
        cross_attention_dim=2 * s.text_hidden,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=_vae((8, 16), 4),
        text_encoder=_clip_text(s),
        text_encoder_2=_clip_text(s, projection=True, projection_dim=proj),
        tokenizer=_clip_tokenizer(s.max_text_tokens),
        tokenizer_2=_clip_tokenizer(s.max_text_tokens),
        unet=unet,
        scheduler=scheduler,
    )


def build_sd3(with_t5: bool = True, s: TinySizes = TinySizes()) -> Any:
    """SD3 (`StableDiffusion3Pipeline`, MMDiT, flow matching); the T5 encoder is optional."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae((4,), 4, flow=True),
        text_encoder=_clip_text(s, projection=True),
        tokenizer=_clip_tokenizer(s.max_text_tokens),
        text_encoder_2=_clip_text(s, projection=True),
        tokenizer_2=_clip_tokenizer(s.max_text_tokens),
        text_encoder_3=_t5(s) if with_t5 else None,
        tokenizer_3=_t5_tokenizer() if with_t5 else None,
    )


def build_flux(s: TinySizes = TinySizes()) -> Any:
    """Flux (`FluxPipeline`): guidance-distilled, CLIP pooled + T5 sequence, packed latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=s.text_hidden,
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=True,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_vae((4,), 1, flow=True),
        text_encoder=_clip_text(s),
        tokenizer=_clip_tokenizer(s.max_text_tokens),
        text_encoder_2=_t5(s),
        tokenizer_2=_t5_tokenizer(),
    )


def build_pixart_sigma(s: TinySizes = TinySizes()) -> Any:
    """PixArt-Σ (`PixArtSigmaPipeline`): a DiT with a T5 text encoder."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    transformer = _pixart_transformer()  # first: the seeded weights follow creation order
    return PixArtSigmaPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=_t5(s),
        vae=_vae((8, 16), 4),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def _sd_unet(s: TinySizes, time_cond_proj_dim: int | None = None) -> Any:
    """The tiny SD UNet; `time_cond_proj_dim` (the LCM student's guidance embedding) only
    when given, so every other folder's config is what it always was."""
    from diffusers import UNet2DConditionModel

    student = {} if time_cond_proj_dim is None else {"time_cond_proj_dim": time_cond_proj_dim}
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=s.text_hidden,
        norm_num_groups=8,
        attention_head_dim=8,
        **student,
    )


def _lcm_scheduler() -> Any:
    from diffusers import LCMScheduler

    return LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def build_sd_lcm(s: TinySizes = TinySizes()) -> Any:
    """An LCM-distilled SD 1.5 saved as a `StableDiffusionPipeline` whose scheduler is
    `LCMScheduler` (what an LCM-LoRA fused into SD, or a distilled checkpoint, ships)."""
    pipe = build_sd(safety_checker=False, s=s)
    pipe.scheduler = _lcm_scheduler()
    return pipe


def build_lcm(s: TinySizes = TinySizes()) -> Any:
    """An LCM student (`LatentConsistencyModelPipeline`): the guidance scale is an embedding
    of the UNet (`time_cond_proj_dim`), so the call has no negative prompt."""
    from diffusers import LatentConsistencyModelPipeline

    return LatentConsistencyModelPipeline(
        vae=_vae((8, 16), 4),
        text_encoder=_clip_text(s),
        tokenizer=_clip_tokenizer(s.max_text_tokens),
        unet=_sd_unet(s, time_cond_proj_dim=32),
        scheduler=_lcm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _pixart_transformer(caption_channels: int = 32) -> Any:
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=caption_channels,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


def build_pixart_alpha(s: TinySizes = TinySizes()) -> Any:
    """PixArt-α (`PixArtAlphaPipeline`): a DiT with a T5 text encoder (120 tokens)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    return PixArtAlphaPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=_t5(s),
        vae=_vae((8, 16), 4),
        transformer=_pixart_transformer(),
        scheduler=DPMSolverMultistepScheduler(),
    )


def _gemma(hidden: int = 8) -> Any:
    from transformers import Gemma2Config, Gemma2Model

    eager: dict[str, Any] = {"attn_implementation": "eager"}  # a config kwarg, not a field
    return Gemma2Model(
        Gemma2Config(
            head_dim=16,
            hidden_size=hidden,
            initializer_range=0.02,
            intermediate_size=64,
            max_position_embeddings=8192,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=2,
            vocab_size=GEMMA_VOCAB,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
            **eager,
        )
    )


def _dc_ae() -> Any:
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )


def _sana_transformer(guidance_embeds: bool = False) -> Any:
    from diffusers import SanaTransformer2DModel

    extra: dict[str, Any] = {}
    if guidance_embeds:
        extra = {"qk_norm": "rms_norm_across_heads", "guidance_embeds": True}
    return SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
        **extra,
    )


def build_sana() -> Any:
    """SANA (`SanaPipeline`): a linear DiT, a Gemma 2 text encoder, a DC-AE; flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

    return SanaPipeline(
        tokenizer=_gemma_tokenizer(),
        text_encoder=_gemma(),
        vae=_dc_ae(),
        transformer=_sana_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def build_sana_sprint() -> Any:
    """SANA-Sprint (`SanaSprintPipeline`): SANA distilled by sCM (TrigFlow) for 1-4 steps,
    the guidance scale embedded in the transformer (no negative prompt)."""
    from diffusers import SanaSprintPipeline, SCMScheduler

    return SanaSprintPipeline(
        tokenizer=_gemma_tokenizer(),
        text_encoder=_gemma(),
        vae=_dc_ae(),
        transformer=_sana_transformer(guidance_embeds=True),
        scheduler=SCMScheduler(),
    )


def _video_t5(s: TinySizes) -> Any:
    """The tiny T5 of the video families, in eval mode (no dropout: a pipeline built here and
    called at once is as deterministic as one loaded from its folder)."""
    return _t5(s).eval()


def build_wan(s: TinySizes = TinySizes()) -> Any:
    """Wan 2.1 text-to-video (`WanPipeline`): a T5 encoder, Wan's causal 3-D VAE (4x temporal,
    8x spatial), a flow-matching video transformer (2x2 patches)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=s.text_hidden,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return WanPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=_video_t5(s),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def build_ltx(s: TinySizes = TinySizes()) -> Any:
    """LTX-Video (`LTXPipeline`): a T5 encoder, LTX's video VAE (here 4x spatial and temporal),
    a flow-matching video transformer conditioned on the frame rate."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=s.text_hidden,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    return LTXPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=_video_t5(s),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def build_cogvideox(s: TinySizes = TinySizes()) -> Any:
    """CogVideoX (`CogVideoXPipeline`): a T5 encoder, CogVideoX's 3-D VAE (4x temporal, 8x
    spatial), an expert transformer (2x2 patches); v-prediction DDIM."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
        DDIMScheduler,
    )

    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=s.text_hidden,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TEXT_TOKENS,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    return CogVideoXPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=_video_t5(s),
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(prediction_type="v_prediction", clip_sample=False),
    )


def tiny_motion_adapter(block_out_channels: tuple[int, ...] = (8, 8)) -> Any:
    """A tiny AnimateDiff `MotionAdapter` for a UNet with these block widths."""
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=block_out_channels,
        motion_layers_per_block=2,
        motion_norm_num_groups=2,
        motion_num_attention_heads=4,
    )


def build_animatediff(s: TinySizes = TinySizes()) -> Any:
    """AnimateDiff (`AnimateDiffPipeline`): an SD 1.x UNet with a `MotionAdapter`'s temporal
    layers (the pipeline holds them together as a `UNetMotionModel`); saved, the folder has
    `unet` (the motion UNet) and `motion_adapter` subfolders."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, UNet2DConditionModel

    blocks = (8, 8)
    unet = UNet2DConditionModel(
        block_out_channels=blocks,
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=s.text_hidden,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False
    )
    return AnimateDiffPipeline(
        vae=_vae((8, 8), 4),
        text_encoder=_clip_text(s),
        tokenizer=_clip_tokenizer(s.max_text_tokens),
        unet=unet,
        motion_adapter=tiny_motion_adapter(blocks),
        scheduler=scheduler,
        feature_extractor=None,
        image_encoder=None,
    )


# The tiny CogVideoX transformer's text length: the pipeline's default prompt length, so a
# recipe without `max_sequence_length` samples it as a published CogVideoX folder does.
COGVIDEOX_TEXT_TOKENS = 226

VIDEO_BUILDERS: dict[str, Callable[[], Any]] = {
    "wan": build_wan,
    "ltx": build_ltx,
    "cogvideox": build_cogvideox,
    "animatediff": build_animatediff,
}

BUILDERS: dict[str, Callable[[], Any]] = {
    "sd": build_sd,
    "sd-v": lambda: build_sd(prediction_type="v_prediction", safety_checker=False),
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "flux": build_flux,
    "pixart-sigma": build_pixart_sigma,
    "pixart-alpha": build_pixart_alpha,
    "sd-lcm": build_sd_lcm,
    "lcm": build_lcm,
    "sana": build_sana,
    "sana-sprint": build_sana_sprint,
    **VIDEO_BUILDERS,
}


def save_snapshot(family: str, folder: Path, seed: int = 0, variant: str | None = None) -> Path:
    """Build `family` with seeded random weights and save it as a diffusers folder."""
    import torch

    torch.manual_seed(seed)
    pipe = BUILDERS[family]()
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(folder), safe_serialization=True, variant=variant)
    return folder
