"""A local CLIP model folder, in any of the three layouts users have, checked before loading.

- synthgen's own: `<name>.json` (an open_clip model config) + `<name>.safetensors`;
- a Hub open_clip repository (e.g. the LAION ViT models): `open_clip_config.json`
  (`model_cfg` + `preprocess_cfg`) + `open_clip_model.safetensors`;
- a transformers `CLIPModel` repository (e.g. `openai/clip-vit-large-patch14`): `config.json`
  + `model.safetensors` + tokenizer files + `preprocessor_config.json`.

Pickles beside the safetensors (`open_clip_pytorch_model.bin`, `pytorch_model.bin`), Flax,
TF, ONNX and OpenVINO files are never read. The config's widths are checked against the
safetensors header's tensor shapes on the meta device before any memory is allocated.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.errors import ModelFolderError
from synthgen.storage.hashing import file_sha256
from synthgen.storage.model_files import (
    UNSAFE_WEIGHT_SUFFIXES,
    read_json_object,
    safetensors_header,
)

logger = logging.getLogger(__name__)

# JSON files a synthgen-layout CLIP folder may hold besides the open_clip config.
NON_CONFIG_JSON = ("training.json", "model_card.json")
HUB_OPEN_CLIP = ("open_clip_config.json", "open_clip_model.safetensors")
CODE_SUFFIXES = (".py", ".pyc", ".so", ".sh", ".ipynb")


@dataclass(frozen=True)
class ClipFolder:
    name: str  # the model's name: score columns are named after it
    config: Path
    weights: Path
    layout: str = "open_clip"  # "open_clip" | "hub_open_clip" | "transformers"
    embed_dim: int = 0

    @property
    def folder(self) -> Path:
        return self.config.parent


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "CLIP folder")


def _folder_name(path: Path) -> str:
    """The repository's name: a Hugging Face cache snapshot is named by its revision."""
    resolved = path.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent.name.split("--")[-1]
    return resolved.name


def _open_clip_cfg(config: Path, data: dict[str, Any]) -> dict[str, Any]:
    if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(data):
        raise ModelFolderError(
            f"{config}: not an open_clip config (needs embed_dim, vision_cfg, text_cfg)"
        )
    text = data["text_cfg"]
    if isinstance(text, dict) and text.get("hf_tokenizer_name"):
        raise ModelFolderError(
            f"{config}: text_cfg.hf_tokenizer_name {text['hf_tokenizer_name']!r} would be "
            "downloaded; only CLIP's bundled tokenizer is supported"
        )
    return data


def check_clip_folder(path: Path) -> ClipFolder:
    """Validate a CLIP folder of any supported layout; nothing is loaded or allocated."""
    if not path.is_dir():
        raise ModelFolderError(f"{path}: CLIP model folder not found")
    for p in path.iterdir():
        if p.suffix in CODE_SUFFIXES:
            raise ModelFolderError(f"{p}: refused (code is never run from a model folder)")
    ignored = sorted(p.name for p in path.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES)
    if ignored:
        logger.info("%s: ignoring pickle file(s), never read: %s", path, ", ".join(ignored))
    if (path / HUB_OPEN_CLIP[0]).is_file():
        folder = _hub_open_clip(path)
    elif (path / "config.json").is_file():
        folder = _transformers_clip(path)
    else:
        folder = _synthgen_open_clip(path)
    _check_shapes(folder)
    return folder


def _synthgen_open_clip(path: Path) -> ClipFolder:
    configs = [p for p in sorted(path.glob("*.json")) if p.name not in NON_CONFIG_JSON]
    if len(configs) != 1:
        raise ModelFolderError(
            f"{path}: expected exactly one open_clip config <name>.json (or a Hub open_clip "
            f"folder with {HUB_OPEN_CLIP[0]}, or a transformers CLIPModel folder with "
            f"config.json), found {len(configs)} JSON files"
        )
    config = configs[0]
    data = _open_clip_cfg(config, _read_json(config))
    weights = config.with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelFolderError(f"{path}: weights {weights.name} not found (safetensors only)")
    return ClipFolder(config.stem, config, weights, "open_clip", int(data["embed_dim"]))


def _hub_open_clip(path: Path) -> ClipFolder:
    config = path / HUB_OPEN_CLIP[0]
    data = _read_json(config)
    model_cfg = data.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise ModelFolderError(f"{config}: no model_cfg object")
    _open_clip_cfg(config, model_cfg)
    weights = path / HUB_OPEN_CLIP[1]
    if not weights.is_file():
        raise ModelFolderError(
            f"{path}: {HUB_OPEN_CLIP[1]} not found; pickled weights "
            "(open_clip_pytorch_model.bin) are never loaded: convert them to safetensors"
        )
    name = _folder_name(path)
    return ClipFolder(name, config, weights, "hub_open_clip", int(model_cfg["embed_dim"]))


def _transformers_clip(path: Path) -> ClipFolder:
    config = path / "config.json"
    data = _read_json(config)
    if data.get("model_type") != "clip":
        raise ModelFolderError(
            f"{config}: model_type {data.get('model_type')!r}; a transformers CLIP folder "
            "needs model_type 'clip' (CLIPModel)"
        )
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelFolderError(
            f"{path}: model.safetensors not found; pickled weights (pytorch_model.bin) are "
            "never loaded: convert them to safetensors"
        )
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        raise ModelFolderError(f"{path}: no tokenizer (tokenizer.json or vocab.json)")
    if not (path / "preprocessor_config.json").is_file():
        raise ModelFolderError(f"{path}: preprocessor_config.json (image processor) not found")
    dim = int(data.get("projection_dim") or 512)
    return ClipFolder(_folder_name(path), config, weights, "transformers", dim)


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, after checking it against the file size."""
    return {name: shape for name, (_, shape) in safetensors_header(path).items()}


def _check_shapes(folder: ClipFolder) -> None:
    """Config widths against weight shapes, the model built on the meta device."""
    shapes = safetensors_shapes(folder.weights)
    expected = _meta_state_shapes(folder)
    for key, shape in expected.items():
        got = shapes.get(key)
        if got is not None and got != shape:
            raise ModelFolderError(
                f"{folder.config}: the config does not match {folder.weights.name}: tensor "
                f"{key!r} has shape {list(got)} in the weights, the config implies {list(shape)}"
            )


def _meta_state_shapes(folder: ClipFolder) -> dict[str, tuple[int, ...]]:
    import torch

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # open_clip warns "initialized randomly" on root
    try:
        with torch.device("meta"):
            if folder.layout == "transformers":
                from transformers import CLIPConfig, CLIPModel

                model = CLIPModel._from_config(CLIPConfig.from_pretrained(str(folder.folder)))
            else:
                model = _create_open_clip(folder, pretrained=None, device="meta")[0]
    except Exception as exc:  # the loader still checks shapes; this check is the early one
        logger.debug("%s: no meta-device shape check (%s)", folder.config, exc)
        return {}
    finally:
        root.setLevel(level)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _open_clip_model_cfg(folder: ClipFolder) -> tuple[dict[str, Any], dict[str, Any]]:
    data = _read_json(folder.config)
    if folder.layout == "hub_open_clip":
        return data["model_cfg"], dict(data.get("preprocess_cfg") or {})
    return data, {}


def _create_open_clip(
    folder: ClipFolder, pretrained: str | None, device: str
) -> tuple[Any, Any, str]:
    """(model, preprocess, registered name) for an open_clip layout, offline."""
    import open_clip

    model_cfg, preprocess_cfg = _open_clip_model_cfg(folder)
    # a registered name no built-in config has, so only this folder's config is used
    reg = (
        "synthgen-"
        + re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name)
        + "-"
        + file_sha256(folder.config)[:8]
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{reg}.json"
        cfg_path.write_text(json.dumps(model_cfg), encoding="utf-8")
        open_clip.add_model_config(cfg_path)
    kwargs = {
        f"image_{k}": preprocess_cfg[k]
        for k in ("mean", "std", "interpolation", "resize_mode")
        if k in preprocess_cfg
    }
    model, _, preprocess = open_clip.create_model_and_transforms(
        reg, pretrained=pretrained, device=device, **kwargs
    )
    return model, preprocess, reg


def clip_sha256(folder: ClipFolder) -> str:
    return file_sha256(folder.weights)


@dataclass
class ClipBundle:
    """A loaded CLIP model with its image transform and tokenizer.

    Whatever the layout, `model.encode_image(pixels, normalize=True)` and
    `model.encode_text(tokenizer(texts), normalize=True)` give embeddings, `preprocess`
    maps a PIL image to a tensor.
    """

    name: str
    model: Any
    preprocess: Any
    tokenizer: Any
    class_embeddings: Any = None


def load_clip(path: Path, device: str = "cpu") -> ClipBundle:
    """Model, transform and tokenizer from a checked folder, with no network access."""
    folder = check_clip_folder(path)
    if folder.layout == "transformers":
        return _load_transformers_clip(folder, device)
    import open_clip

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # open_clip logs each load step at INFO on root
    try:
        model, preprocess, reg = _create_open_clip(folder, str(folder.weights), device)
        tokenizer = open_clip.get_tokenizer(reg)
    finally:
        root.setLevel(level)
    model.eval()
    return ClipBundle(folder.name, model, preprocess, tokenizer)


def _load_transformers_clip(folder: ClipFolder, device: str) -> ClipBundle:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    where = str(folder.folder)
    model = CLIPModel.from_pretrained(where, use_safetensors=True, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(where, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(where, local_files_only=True)
    text_config: Any = model.config.text_config
    length = int(text_config.max_position_embeddings)

    def tokenize(texts: list[str]) -> Any:
        return tokenizer(
            list(texts),
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def preprocess(image: Any) -> Any:
        return processor(images=image, return_tensors="pt").pixel_values[0]

    wrapped = _make_wrapper()(model).to(device).eval()
    return ClipBundle(folder.name, wrapped, preprocess, tokenize)


def _features(out: Any) -> Any:
    """transformers 5 returns an output object (projected features in `pooler_output`)."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def _make_wrapper() -> type:
    import torch

    class TransformersClip(torch.nn.Module):
        """open_clip's `encode_image` / `encode_text` on a transformers CLIPModel."""

        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def encode_image(self, pixels: Any, normalize: bool = False) -> Any:
            f = _features(self.model.get_image_features(pixel_values=pixels))
            return torch.nn.functional.normalize(f, dim=-1) if normalize else f

        def encode_text(self, tokens: Any, normalize: bool = False) -> Any:
            f = _features(self.model.get_text_features(input_ids=tokens))
            return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    return TransformersClip
