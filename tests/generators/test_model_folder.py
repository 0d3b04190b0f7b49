"""Model folders: stock snapshots load, and every valid-looking-but-broken folder is refused,
naming file and problem, before any model loads (no model is allocated to find out)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from synthgen.generators.model_folder import (
    check_sampling,
    inspect_folder,
    load_pipeline,
    load_safety_checker,
)
from synthgen.generators.random_pipelines import save_snapshot
from synthgen.schemas.errors import ModelFolderError
from synthgen.validators.clip_folder import check_clip_folder, load_clip
from tests.conftest import TINY_CLIP
from tests.generators.families import poison


@pytest.fixture
def sd(tmp_path: Path, model_dir: Path) -> Path:
    folder = tmp_path / "sd"
    shutil.copytree(model_dir / "sd", folder)
    return folder


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_huge_safetensors_header_length_is_refused(sd: Path) -> None:
    weights = sd / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", 2**62)
    weights.write_bytes(bytes(data))
    with pytest.raises(
        ModelFolderError, match=r"unet/diffusion_pytorch_model.safetensors: corrupt"
    ):
        inspect_folder(sd)


@pytest.mark.parametrize("cls", ["DDPMPipeline", "StableDiffusionImg2ImgPipeline"])
def test_pipeline_that_is_not_text_to_image_is_refused(sd: Path, cls: str) -> None:
    _edit_json(sd / "model_index.json", _class_name=cls)
    with pytest.raises(ModelFolderError, match=f"model_index.json: {cls} is not a text-to-image"):
        inspect_folder(sd)


def test_zero_train_timesteps_is_refused(sd: Path) -> None:
    _edit_json(sd / "scheduler" / "scheduler_config.json", num_train_timesteps=0)
    with pytest.raises(ModelFolderError, match=r"scheduler_config.json: num_train_timesteps"):
        inspect_folder(sd)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler"])
def test_more_steps_than_the_scheduler_can_sample_is_refused(sd: Path, name: str) -> None:
    folder = inspect_folder(sd)
    check_sampling(folder, name, 50)
    with pytest.raises(ModelFolderError, match=r"scheduler_config.json: .*(1000|trained range)"):
        check_sampling(folder, name, 1000)


def test_config_that_does_not_match_its_weights_is_refused(sd: Path) -> None:
    config = sd / "unet" / "config.json"
    _edit_json(config, block_out_channels=[16, 4096])
    with pytest.raises(ModelFolderError, match=r"unet: config.json does not match the weights"):
        inspect_folder(sd)


def test_the_shapes_a_config_implies_are_built_once_and_again_when_it_changes(
    sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthgen.generators import model_folder

    built: list[str] = []
    real = model_folder._build_meta_shapes

    def counted(sub: Path, cls: type) -> dict[str, tuple[int, ...]] | None:
        built.append(sub.name)
        return real(sub, cls)

    monkeypatch.setattr(model_folder, "_build_meta_shapes", counted)
    model_folder._implied_shapes.cache_clear()
    inspect_folder(sd)
    assert sorted(built) == ["text_encoder", "unet", "vae"]
    inspect_folder(sd)  # a build's driver, then its in-process worker
    assert sorted(built) == ["text_encoder", "unet", "vae"]
    _edit_json(sd / "unet" / "config.json", block_out_channels=[16, 4096])
    with pytest.raises(ModelFolderError, match=r"unet: config.json does not match the weights"):
        inspect_folder(sd)
    assert sorted(built) == ["text_encoder", "unet", "unet", "vae"]


def test_component_with_only_pickles_is_refused_with_a_conversion_hint(
    sd: Path, tmp_path: Path
) -> None:
    (sd / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    poison(sd / "vae" / "diffusion_pytorch_model.bin", tmp_path / "marker")
    with pytest.raises(ModelFolderError, match=r"vae: only pickle-based weights.*[Cc]onvert"):
        inspect_folder(sd)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: (d / "unet" / "hack.py").write_text("x = 1\n"), r"hack.py: .*code"),
        (
            lambda d: _edit_json(d / "model_index.json", unet=["evil_lib", "UNet"]),
            r"component 'unet' comes from 'evil_lib'",
        ),
        (
            lambda d: (d / "unet" / "link.json").symlink_to("/etc/hostname"),
            r"link.json: symbolic links are refused",
        ),
    ],
)
def test_code_and_foreign_components_stay_refused(sd: Path, tamper, message: str) -> None:
    tamper(sd)
    with pytest.raises(ModelFolderError, match=message):
        inspect_folder(sd)


def test_variant_files_are_selected_by_model_variant(tmp_path: Path) -> None:
    folder = save_snapshot("sd", tmp_path / "sd16", variant="fp16")
    with pytest.raises(
        ModelFolderError, match=r"no safetensors weights for the default.*model.variant"
    ):
        inspect_folder(folder)
    checked = inspect_folder(folder, variant="fp16")
    assert all(".fp16." in w.name for c in checked.components for w in c.weights), (
        checked.components
    )
    pipe = load_pipeline(folder, "native", "float32", "cpu", 1, variant="fp16")
    assert type(pipe).__name__ == "StableDiffusionPipeline"


def test_stock_snapshot_loads_without_its_checker_and_exposes_it(tmp_path: Path) -> None:
    folder = save_snapshot("sd", tmp_path / "sd")
    poison(folder / "safety_checker" / "pytorch_model.bin", tmp_path / "marker")
    pipe = load_pipeline(folder, "native", "float32", "cpu", 1)
    assert pipe.safety_checker is None
    checker, extractor = load_safety_checker(folder)
    assert type(checker).__name__ == "StableDiffusionSafetyChecker"
    assert type(extractor).__name__ == "CLIPImageProcessor"
    assert not (tmp_path / "marker").exists()


def test_hugging_face_cache_snapshot_links_are_followed(sd: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    for p in sorted(sd.rglob("*")):
        if p.is_file():
            blob = repo / "blobs" / str(abs(hash(str(p))))
            shutil.copy(p, blob)
            link = snap / p.relative_to(sd)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    assert inspect_folder(snap).class_name == "StableDiffusionPipeline"


# -- CLIP folders ------------------------------------------------------------------------------


def _hub_open_clip(folder: Path, model_dir: Path) -> Path:
    folder.mkdir()
    cfg = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    shutil.copy(
        model_dir / "clip" / "tiny-clip.safetensors", folder / "open_clip_model.safetensors"
    )
    poison(folder / "open_clip_pytorch_model.bin", folder.parent / "marker")
    return folder


def _transformers_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPModel

    from synthgen.generators.random_pipelines import tiny_clip_config, tiny_image_processor
    from synthgen.generators.sd_layout import write_clip_tokenizer

    torch.manual_seed(0)
    config = tiny_clip_config(projection_dim=24)
    CLIPModel(config).save_pretrained(str(folder), safe_serialization=True)
    tiny_image_processor().save_pretrained(str(folder))
    write_clip_tokenizer(folder, 16)
    poison(folder / "pytorch_model.bin", folder.parent / "marker")
    return folder


def _encode(path: Path) -> tuple[int, int]:
    import torch
    from PIL import Image

    bundle = load_clip(path)
    pixels = torch.stack([bundle.preprocess(Image.new("RGB", (32, 32), "red"))])
    img = bundle.model.encode_image(pixels, normalize=True)
    txt = bundle.model.encode_text(bundle.tokenizer(["a red square"]), normalize=True)
    assert torch.allclose(img.norm(dim=-1), torch.ones(1))
    return img.shape[-1], txt.shape[-1]


def test_hub_open_clip_folder_is_accepted(tmp_path: Path, model_dir: Path) -> None:
    folder = _hub_open_clip(tmp_path / "CLIP-ViT-tiny-laion", model_dir)
    checked = check_clip_folder(folder)
    assert (checked.name, checked.layout, checked.embed_dim) == (
        "CLIP-ViT-tiny-laion",
        "hub_open_clip",
        16,
    )
    assert _encode(folder) == (16, 16)
    assert not (tmp_path / "marker").exists()


def test_transformers_clip_folder_is_accepted(tmp_path: Path) -> None:
    folder = _transformers_clip(tmp_path / "clip-vit-tiny")
    checked = check_clip_folder(folder)
    assert (checked.layout, checked.embed_dim) == ("transformers", 24)
    assert _encode(folder) == (24, 24)
    assert not (tmp_path / "marker").exists()


def test_clip_config_wider_than_its_weights_is_refused(tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(model_dir / "clip", folder)
    cfg = json.loads((folder / "tiny-clip.json").read_text())
    cfg["vision_cfg"]["width"] = 4096  # would allocate far more than the weights hold
    (folder / "tiny-clip.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match=r"tiny-clip.json: the config does not match"):
        check_clip_folder(folder)


def test_transformers_clip_config_that_does_not_match_is_refused(tmp_path: Path) -> None:
    folder = _transformers_clip(tmp_path / "clip-vit-tiny")
    _edit_json(folder / "config.json", projection_dim=4096)
    with pytest.raises(ModelFolderError, match=r"config.json: the config does not match"):
        check_clip_folder(folder)
