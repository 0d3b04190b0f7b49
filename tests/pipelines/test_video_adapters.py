"""Adapters and conditioning on clip families: a LoRA on the denoiser of each kind of video
model (the AnimateDiff UNet, the Wan transformer) changes the clips and the build's identity
and regenerates byte for byte; a textual-inversion embedding on a family without a CLIP text
encoder, and an image-conditioned mode on any video family, are refused by name before
anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthgen.generators.adapters import AdapterError
from synthgen.generators.random_pipelines import save_snapshot
from synthgen.pipelines.build import run_build
from tests.conftest import write_recipe
from tests.generators.test_adapters import make_embedding
from tests.video import clip_recipe, clips_and_sidecars

TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
PIPELINES = {"animatediff": "AnimateDiffPipeline", "wan": "WanPipeline"}


def _video_lora(folder: Path, family: str, out: Path) -> Path:
    """A random-weight LoRA on a video folder's denoiser, saved by its pipeline's loader."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    component = "unet" if family == "animatediff" else "transformer"
    config = json.loads((folder / component / "config.json").read_text())
    net = getattr(diffusers, config["_class_name"]).from_pretrained(str(folder / component))
    torch.manual_seed(0)
    net.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the LoRA change something
                p.normal_(0.0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(net))
    getattr(diffusers, PIPELINES[family]).save_lora_weights(
        str(out.parent), weight_name=out.name, **{f"{component}_lora_layers": layers}
    )
    return out


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_a_lora_on_a_video_denoiser_changes_the_clips_and_the_identity(
    family: str, model_dir: Path, tmp_path: Path
) -> None:
    from synthgen.generators.regenerate import Inputs, regenerate

    folder = save_snapshot(family, tmp_path / family, seed=0)
    lora = _video_lora(folder, family, tmp_path / "adapter" / "motion_lora.safetensors")
    data = clip_recipe(folder, family, model_dir)
    plain = run_build(
        write_recipe(tmp_path / "plain.yaml", data), tmp_path / "plain", show_progress=False
    )
    data["adapters"] = [{"path": str(lora), "scale": 0.8}]
    adapted = run_build(
        write_recipe(tmp_path / "lora.yaml", data), tmp_path / "lora", show_progress=False
    )
    (a, _), (b, sidecars) = (
        clips_and_sidecars(tmp_path / "plain"),
        clips_and_sidecars(tmp_path / "lora"),
    )
    assert a.keys() == b.keys() and len(a) == 4
    assert all(a[k] != b[k] for k in a)  # the LoRA changed every clip
    assert plain.manifest.recipe_hash != adapted.manifest.recipe_hash
    key = sorted(b)[0]
    (ref,) = sidecars[key]["adapters"]["all"]
    assert (ref["kind"], ref["scale"], ref["path"]) == ("lora", 0.8, lora.name)
    # regenerated from its sidecar's provenance, LoRA applied again, byte for byte
    assert regenerate(sidecars[key], Inputs.for_build(tmp_path / "lora")) == b[key]


def test_a_textual_inversion_on_a_t5_video_family_is_refused_by_name(
    model_dir: Path, tmp_path: Path
) -> None:
    folder = save_snapshot("wan", tmp_path / "wan", seed=0)
    data = clip_recipe(folder, "wan", model_dir)
    emb = make_embedding(tmp_path / "ink.safetensors", "<ink>", width=32)
    data["adapters"] = [{"kind": "textual_inversion", "path": str(emb)}]
    with pytest.raises(AdapterError, match="WanPipeline does not load textual-inversion"):
        run_build(write_recipe(tmp_path / "r.yaml", data), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("family", ["wan", "ltx", "cogvideox", "animatediff"])
def test_an_image_conditioned_mode_on_a_video_family_is_refused_by_name(
    family: str, model_dir: Path
) -> None:
    from synthgen.generators.conditioning import ConditioningError
    from synthgen.generators.modes.base import mode_classes
    from synthgen.schemas.recipe import recipe_from_dict
    from synthgen.schemas.recipe.conditioning import ConditioningSpec
    from tests.conftest import tiny_recipe_dict

    recipe = recipe_from_dict(tiny_recipe_dict(model_dir))
    for name in ("img2img", "inpaint", "controlnet", "ip_adapter"):
        spec = ConditioningSpec.model_construct(mode=name)  # the family decides, first
        with pytest.raises(
            ConditioningError, match=f"{name} has no diffusers pipeline for {family}"
        ):
            mode_classes()[name]().validate(recipe, "zero", spec, family)
