"""Feedback guidance on the bundled digits models: the probe's criterion, through the CLIP
image tower, steers the latents; reproducible, per sample, every k steps, refused by name."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from synthgen.generators.guidance import (
    DEFAULT_SCALE,
    FeedbackGuidance,
    alpha_bar,
    guidance_call_kwargs,
    guided,
    predicted_x0,
    read_probe,
    refuse_guidance,
    tensor_transform,
)
from synthgen.schemas.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[2]
LDM = ROOT / "models" / "digits-ldm"
CLIP = ROOT / "models" / "digits-clip"
STEPS = 10


@pytest.fixture(scope="module")
def pipe() -> Any:
    from synthgen.generators.model_folder import load_pipeline

    return load_pipeline(LDM, "dpm-solver++", "float32", "cpu", 1)


@pytest.fixture(scope="module")
def clip() -> Any:
    from synthgen.validators.clip_folder import load_clip

    return load_clip(CLIP)


def probe_bytes(weight: torch.Tensor, bias: torch.Tensor, classes: list[int], name: str) -> bytes:
    from safetensors.torch import save

    metadata = {
        "kind": "linear",
        "classes": json.dumps(classes),
        "embedding": name,
        "normalise": "l2",
    }
    return save({"weight": weight.contiguous(), "bias": bias.contiguous()}, metadata=metadata)


@pytest.fixture(scope="module")
def probe(clip: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fitted linear probe in the contract's format: the CLIP model's own zero-shot
    classifier (its prompt embeddings times its logit scale), written to a file."""
    from synthgen.validators.clip_model import encode_texts

    text = encode_texts(clip, [f"a handwritten digit {d}" for d in range(10)], 10)
    weight = text * float(clip.model.logit_scale.detach().exp())
    path = tmp_path_factory.mktemp("probe") / "probe-0.safetensors"
    path.write_bytes(probe_bytes(weight, torch.zeros(10), list(range(10)), clip.name))
    return path


def generate(
    pipe: Any,
    clip: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    labels: Sequence[int],
    guidance: FeedbackGuidance | None,
    guidance_scale: float = 3.0,
    run: Any = None,
    **call: Any,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One call as generators/handler.py::call_model makes it: prompt lists, one CPU
    generator per sample, output_type="pt", negatives only with CFG, inference mode."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    if guidance_scale > 1.0:
        call["negative_prompt"] = [""] * len(prompts)
    with guided(pipe, guidance, labels, clip) as kwargs, torch.inference_mode():
        out = (run or pipe)(
            prompt=list(prompts),
            num_inference_steps=STEPS,
            guidance_scale=guidance_scale,
            height=16,
            width=16,
            generator=generators,
            output_type="pt",
            **call,
            **kwargs,
        )
    return out.images, kwargs


def criteria(clip: Any, probe: Path, images: torch.Tensor, labels: Sequence[int]) -> Any:
    """(loss, entropy, accuracy) per image, scored as synthgen scores: uint8 pixels, PIL,
    the CLIP model's own preprocess."""
    from PIL import Image

    from synthgen.generators.handler import to_pixels
    from synthgen.validators.clip_model import encode_images

    pixels = to_pixels(images).pixels
    emb = encode_images(clip, [Image.fromarray(p) for p in pixels], len(pixels))
    logp = torch.log_softmax(read_probe(probe.read_bytes()).logits(emb), dim=-1)
    target = torch.tensor(list(labels))
    loss = -logp[torch.arange(len(target)), target]
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return loss, entropy, (logp.argmax(dim=-1) == target).float()


LABELS = [0, 3, 5, 8]
SEEDS = [11, 12, 13, 14]
OWN = [f"a handwritten digit {d}" for d in LABELS]


def test_guidance_changes_the_images_reproducibly(pipe: Any, clip: Any, probe: Path) -> None:
    guidance = FeedbackGuidance.from_file(probe)
    base, _ = generate(pipe, clip, OWN, SEEDS, LABELS, None)
    first, kw = generate(pipe, clip, OWN, SEEDS, LABELS, guidance)
    with torch.inference_mode():  # the arguments made inside the caller's inference mode
        second, _ = generate(pipe, clip, OWN, SEEDS, LABELS, guidance)
    assert kw["callback_on_step_end_tensor_inputs"] == ["latents"]
    assert (first - base).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image changed
    assert first.numpy().tobytes() == second.numpy().tobytes()
    assert not pipe.unet._forward_hooks  # the hook went with the call


def test_scale_zero_gives_exactly_the_unguided_images(pipe: Any, clip: Any, probe: Path) -> None:
    base, _ = generate(pipe, clip, OWN, SEEDS, LABELS, None)
    zero, kw = generate(pipe, clip, OWN, SEEDS, LABELS, FeedbackGuidance.from_file(probe, scale=0))
    assert kw["callback_on_step_end"].evaluations == 5  # it ran, and changed nothing
    assert torch.equal(zero, base)


def test_loss_guidance_moves_the_probe_toward_the_target(pipe: Any, clip: Any, probe: Path) -> None:
    """Unconditional digits (empty prompt, no CFG) steered to a target class each, and
    class-prompted digits (with CFG) steered to their own class: lower loss on average."""
    labels = list(range(10))
    seeds = list(range(100, 110))
    guidance = FeedbackGuidance.from_file(probe, "loss")
    base, _ = generate(pipe, clip, [""] * 10, seeds, labels, None, guidance_scale=1.0)
    steered, _ = generate(pipe, clip, [""] * 10, seeds, labels, guidance, guidance_scale=1.0)
    loss0, _, acc0 = criteria(clip, probe, base, labels)
    loss1, _, acc1 = criteria(clip, probe, steered, labels)
    assert loss1.mean() < 0.5 * loss0.mean()
    assert acc1.mean() > acc0.mean()  # measured: 0.4 -> 0.7 (chance 0.1); loss 6.5x lower
    own, _ = generate(pipe, clip, OWN, SEEDS, LABELS, None)
    own_steered, _ = generate(pipe, clip, OWN, SEEDS, LABELS, guidance)
    assert criteria(clip, probe, own_steered, LABELS)[0].mean() < (
        criteria(clip, probe, own, LABELS)[0].mean()
    )


def test_entropy_guidance_sign(pipe: Any, clip: Any, probe: Path) -> None:
    """A positive scale lowers the prediction's entropy, a negative one raises it."""
    prompts, labels, seeds = [""] * 6, [0] * 6, list(range(200, 206))
    base, _ = generate(pipe, clip, prompts, seeds, labels, None, guidance_scale=1.0)
    entropy = [criteria(clip, probe, base, labels)[1].mean()]
    for scale in (DEFAULT_SCALE, -DEFAULT_SCALE):
        g = FeedbackGuidance.from_file(probe, "entropy", scale)
        images, _ = generate(pipe, clip, prompts, seeds, labels, g, guidance_scale=1.0)
        entropy.append(criteria(clip, probe, images, labels)[1].mean())
    assert entropy[1] < entropy[0] < entropy[2]


@pytest.mark.parametrize("every", [1, 2, 3, 9, 10])
def test_guidance_runs_every_k_steps(
    pipe: Any, clip: Any, probe: Path, monkeypatch: pytest.MonkeyPatch, every: int
) -> None:
    clip_calls: list[int] = []
    real = clip.model.encode_image

    def encode_image(*args: Any, **kwargs: Any) -> Any:
        clip_calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_image", encode_image)
    unet_calls: list[int] = []
    handle = pipe.unet.register_forward_hook(lambda *a: unet_calls.append(1))
    try:
        g = FeedbackGuidance.from_file(probe, every=every)
        _, kw = generate(pipe, clip, OWN[:2], SEEDS[:2], LABELS[:2], g)
    finally:
        handle.remove()
    callback = kw["callback_on_step_end"]
    expected = len([i for i in range(STEPS - 1) if i % every == 0])  # never after the last
    assert callback.steps_seen == STEPS == len(unet_calls)
    assert callback.evaluations == len(clip_calls) == expected


def test_a_sample_does_not_depend_on_its_neighbours(pipe: Any, clip: Any, probe: Path) -> None:
    """Same call shape, other neighbours: the first image is the same bytes. Alone (another
    shape) it differs only by float rounding (up to 1e-3 after ten steps on AVX2 kernels),
    far less than guidance changes it (0.17 to 0.85)."""
    g = FeedbackGuidance.from_file(probe)
    batch, _ = generate(pipe, clip, OWN, SEEDS, LABELS, g)
    others, _ = generate(pipe, clip, [OWN[0], *OWN[:0:-1]], [SEEDS[0], 7, 8, 9], [0, 9, 1, 2], g)
    assert torch.equal(batch[0], others[0])
    unguided, _ = generate(pipe, clip, OWN, SEEDS, LABELS, None)
    for i in range(len(OWN)):
        alone, _ = generate(pipe, clip, OWN[i : i + 1], SEEDS[i : i + 1], LABELS[i : i + 1], g)
        rounding = (alone[0] - batch[i]).abs().max()
        assert rounding < 1e-2
        assert (batch[i] - unguided[i]).abs().max() > 0.1


def test_guidance_with_img2img(pipe: Any, clip: Any, probe: Path) -> None:
    """A pipeline derived with from_pipe (conditioning modes) shares the hooked UNet; the
    guidance runs on the strength-shortened schedule."""
    from diffusers import StableDiffusionImg2ImgPipeline

    derived = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    source = torch.zeros(1, 3, 16, 16)
    source[:, :, 3:13, 6:10] = 1.0  # a bar: a one
    call = {"image": [source[0]] * 2, "strength": 0.6, "run": derived}
    g = FeedbackGuidance.from_file(probe, every=1)
    base, _ = generate(pipe, clip, OWN[:2], SEEDS[:2], LABELS[:2], None, **call)
    steered, kw = generate(pipe, clip, OWN[:2], SEEDS[:2], LABELS[:2], g, **call)
    assert kw["callback_on_step_end"].evaluations == int(STEPS * 0.6) - 1
    assert (steered - base).abs().max() > 0.05


def test_hook_removed_when_the_call_fails(pipe: Any, clip: Any, probe: Path) -> None:
    g = FeedbackGuidance.from_file(probe)
    with pytest.raises(ValueError, match="no row for class id"):
        guidance_call_kwargs(pipe, g, [0, 10], clip)
    with pytest.raises(RuntimeError, match="stop"), guided(pipe, g, [0], clip):
        assert pipe.unet._forward_hooks
        raise RuntimeError("stop")
    assert not pipe.unet._forward_hooks
    never = pytest.raises(RuntimeError, match="never ran the guidance callback")
    with never, guided(pipe, g, [0], clip), torch.inference_mode():
        pipe(prompt=["a digit"], num_inference_steps=2, height=16, width=16)  # not passed
    assert not pipe.unet._forward_hooks
    with pytest.raises(ValueError, match="needs a target class id"):
        guidance_call_kwargs(pipe, g, [None], clip)  # type: ignore[list-item]


def test_provenance_description(probe: Path) -> None:
    import hashlib

    g = FeedbackGuidance.from_file(probe, "entropy", 0.2, 3)
    assert g.describe() == {
        "guidance": "feedback",
        "probe_sha256": hashlib.sha256(probe.read_bytes()).hexdigest(),
        "criterion": "entropy",
        "scale": 0.2,
        "every": 3,
    }
    assert json.loads(json.dumps(g.describe())) == g.describe()
    assert g.describe("_feedback/probe-0.safetensors") == {
        "probe": "_feedback/probe-0.safetensors",
        **g.describe(),
    }
    assert FeedbackGuidance.from_file(probe, sha256=g.probe_sha256) == FeedbackGuidance(
        probe.read_bytes()
    )
    with pytest.raises(ValueError, match="the round recorded 00"):
        FeedbackGuidance.from_file(probe, sha256="00" * 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"criterion": "margin"}, "balance.feedback.criterion"),
        ({"every": 0}, "balance.feedback.every"),
        ({"scale": float("nan")}, "balance.feedback.scale"),
    ],
)
def test_bad_settings_are_refused(probe: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        FeedbackGuidance(**{"probe": probe.read_bytes(), **change})


def test_bad_probe_files_are_refused(clip: Any, pipe: Any) -> None:
    w, b = torch.zeros(3, 64), torch.zeros(3)
    with pytest.raises(ValueError, match="does not match"):
        FeedbackGuidance(probe_bytes(w, b, [0, 1], clip.name))
    with pytest.raises(ValueError, match="repeat a class id"):
        FeedbackGuidance(probe_bytes(w, b, [0, 1, 1], clip.name))
    with pytest.raises(ValueError, match="not a safetensors"):
        FeedbackGuidance(b"junk")
    with pytest.raises(ValueError, match="trained on 'other-clip'"):
        other = FeedbackGuidance(probe_bytes(w, b, [0, 1, 2], "other-clip"))
        guidance_call_kwargs(pipe, other, [0], clip)
    narrow = FeedbackGuidance(probe_bytes(torch.zeros(3, 32), b, [0, 1, 2], clip.name))
    with pytest.raises(ValueError, match="32-d probe for 64-d"):
        guidance_call_kwargs(pipe, narrow, [0], clip)
    assert not pipe.unet._forward_hooks


@pytest.mark.parametrize(
    ("family", "named"),
    [
        ("FluxPipeline", "FluxPipeline (flux, flow)"),
        ("sd3", "StableDiffusion3Pipeline (sd3, flow)"),
        ("SanaSprintPipeline", "SanaSprintPipeline (sana-sprint, trigflow)"),
        ("flow", "the flow families"),
        ("PixArtSigmaPipeline", "PixArtSigmaPipeline (pixart-sigma, diffusion)"),
    ],
)
def test_refused_families_are_named(family: str, named: str) -> None:
    with pytest.raises(RecipeError, match=r"balance\.feedback\.guidance: .*" + re.escape(named)):
        refuse_guidance(family)


def test_supported_families_and_derived_pipelines() -> None:
    for family in ("StableDiffusionPipeline", "sd", "sdxl", "lcm"):
        refuse_guidance(family)
    refuse_guidance("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    refuse_guidance("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")
    with pytest.raises(RecipeError, match=r"callback_on_step_end.*StableDiffusionUpscale"):
        refuse_guidance("StableDiffusionPipeline", "StableDiffusionUpscalePipeline")
    with pytest.raises(RecipeError, match="unknown family 'nope'"):
        refuse_guidance("nope")


def test_tensor_transform_is_the_scorers_preprocess(clip: Any, model_dir: Path) -> None:
    """The guidance graph's transform gives what the scorer's PIL path gives: exactly at
    the digits CLIP's own size, up to resampling differences when it resizes (16 -> 32)."""
    from PIL import Image

    from synthgen.validators.clip_folder import load_clip

    pixels = torch.randint(0, 256, (2, 16, 16, 3), generator=torch.Generator().manual_seed(0))
    images = pixels.permute(0, 3, 1, 2).float() / 255
    pil = [Image.fromarray(p.to(torch.uint8).numpy()) for p in pixels]
    own = tensor_transform(clip.preprocess, 16, 16)(images)
    assert torch.equal(own, torch.stack([clip.preprocess(p) for p in pil]))
    tiny = load_clip(model_dir / "clip")  # 32x32 inputs
    ours = tensor_transform(tiny.preprocess, 16, 16)(images.requires_grad_(True))
    theirs = torch.stack([tiny.preprocess(p) for p in pil])
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    assert (ours - theirs).abs().mean() < 0.05
    (grad,) = torch.autograd.grad(ours.sum(), [images])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def _tiny(family: str) -> Any:
    """A tiny random-weight pipeline of `family` (generators/random_pipelines.py)."""
    from diffusers import EulerDiscreteScheduler

    from synthgen.generators import random_pipelines as rp

    torch.manual_seed(0)
    if family == "sd-v-euler":  # v-prediction, Euler's interpolated (fractional) timesteps
        p = rp.build_sd(prediction_type="v_prediction", safety_checker=False)
        p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)
    else:
        p = {"sdxl": rp.build_sdxl, "lcm": rp.build_lcm}[family]()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.slow  # ~20 s to build each random pipeline on 2 cores
@pytest.mark.parametrize("family", ["sdxl", "lcm", "sd-v-euler"])
def test_other_supported_families(family: str, clip: Any, probe: Path) -> None:
    """SDXL (CFG, Euler), an LCM student (no CFG), SD v-prediction with Euler: 32x32 images
    (the digits CLIP's transform resizes them to 16x16 in the graph); guidance changes them,
    reproducibly, and lowers the probe's loss on average."""
    tiny = _tiny(family)
    g = FeedbackGuidance.from_file(probe, every=1)
    labels, seeds = [1, 7, 4], [1, 2, 3]
    cfg = 1.0 if family == "lcm" else 3.0
    size = {"height": 32, "width": 32}

    def run(guidance: FeedbackGuidance | None) -> tuple[torch.Tensor, dict[str, Any]]:
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with guided(tiny, guidance, labels, clip) as kwargs, torch.inference_mode():
            images = tiny(
                prompt=["a digit"] * 3,
                num_inference_steps=4,
                guidance_scale=cfg,
                generator=gens,
                output_type="pt",
                **size,
                **kwargs,
            ).images
        return images, kwargs

    base, _ = run(None)
    first, kw = run(g)
    second, _ = run(g)
    assert kw["callback_on_step_end"].evaluations == 3
    assert (first - base).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert torch.equal(first, second)
    small = torch.nn.functional.interpolate(first, size=16, mode="area")
    small_base = torch.nn.functional.interpolate(base, size=16, mode="area")
    loss = criteria(clip, probe, small, labels)[0].mean()
    assert loss < criteria(clip, probe, small_base, labels)[0].mean()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_inverts_the_forward_process(prediction: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = 0.3
    sample = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    output = {"epsilon": eps, "v_prediction": a**0.5 * eps - (1 - a) ** 0.5 * x0}.get(
        prediction, x0
    )
    assert torch.allclose(predicted_x0(sample, output, a, prediction), x0, atol=1e-5)


def test_alpha_bar_at_integer_and_interpolated_timesteps(pipe: Any) -> None:
    """alphas_cumprod at integer timesteps; at Euler's fractional ones, 1 / (1 + sigma^2)
    of the sigma Euler itself interpolates."""
    from diffusers import EulerDiscreteScheduler

    assert alpha_bar(pipe.scheduler, 500) == float(pipe.scheduler.alphas_cumprod[500])
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    euler.set_timesteps(7)
    assert any(not float(t).is_integer() for t in euler.timesteps)
    for t, sigma in zip(euler.timesteps, euler.sigmas, strict=False):
        assert alpha_bar(euler, t) == pytest.approx(1 / (1 + float(sigma) ** 2), rel=1e-5)


def test_guidance_with_an_euler_sampler(pipe: Any, clip: Any, probe: Path) -> None:
    """Euler's latents are sigma-scaled and its timesteps fractional: the x0 the guidance
    differentiates comes from the UNet's (scaled) input, so it still steers."""
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    derived = type(pipe).from_pipe(pipe, scheduler=euler)
    derived.set_progress_bar_config(disable=True)
    labels, seeds = list(range(6)), list(range(300, 306))
    g = FeedbackGuidance.from_file(probe, every=1)
    call = {"guidance_scale": 1.0, "run": derived}
    base, _ = generate(derived, clip, [""] * 6, seeds, labels, None, **call)
    steered, _ = generate(derived, clip, [""] * 6, seeds, labels, g, **call)
    assert criteria(clip, probe, steered, labels)[0].mean() < (
        0.5 * criteria(clip, probe, base, labels)[0].mean()
    )
