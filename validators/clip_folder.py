"""A local open_clip model folder: `<name>.json` (architecture) + `<name>.safetensors` (weights)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.errors import ModelFolderError
from synthgen.storage.hashing import file_sha256
from synthgen.storage.model_files import UNSAFE_WEIGHT_SUFFIXES

# JSON files a CLIP folder may hold besides the open_clip config.
NON_CONFIG_JSON = ("training.json", "model_card.json")


@dataclass(frozen=True)
class ClipFolder:
    name: str
    config: Path
    weights: Path


def check_clip_folder(path: Path) -> ClipFolder:
    """Validate a CLIP folder: exactly one config JSON and its safetensors, no pickles or code."""
    if not path.is_dir():
        raise ModelFolderError(f"{path}: CLIP model folder not found")
    for p in path.iterdir():
        if p.suffix in UNSAFE_WEIGHT_SUFFIXES or p.suffix == ".py":
            raise ModelFolderError(f"{p}: refused (only a config JSON and safetensors are loaded)")
    configs = [p for p in sorted(path.glob("*.json")) if p.name not in NON_CONFIG_JSON]
    if len(configs) != 1:
        raise ModelFolderError(
            f"{path}: expected exactly one open_clip config <name>.json, found {len(configs)}"
        )
    config = configs[0]
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelFolderError(f"{config}: unreadable config: {exc}") from None
    if not isinstance(data, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(data):
        raise ModelFolderError(
            f"{config}: not an open_clip config (needs embed_dim, vision_cfg, text_cfg)"
        )
    weights = config.with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelFolderError(f"{path}: weights {weights.name} not found (safetensors only)")
    return ClipFolder(name=config.stem, config=config, weights=weights)


def clip_sha256(folder: ClipFolder) -> str:
    return file_sha256(folder.weights)


@dataclass
class ClipBundle:
    """A loaded CLIP model with its image transform and tokenizer."""

    name: str
    model: Any
    preprocess: Any
    tokenizer: Any
    class_embeddings: Any = None


def load_clip(path: Path, device: str = "cpu") -> ClipBundle:
    """Model, transform and tokenizer from a checked folder, with no network access."""
    import logging

    import open_clip

    folder = check_clip_folder(path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # open_clip logs each load step at INFO on root
    try:
        open_clip.add_model_config(folder.config)
        model, _, preprocess = open_clip.create_model_and_transforms(
            folder.name, pretrained=str(folder.weights), device=device
        )
        tokenizer = open_clip.get_tokenizer(folder.name)
    finally:
        root.setLevel(level)
    model.eval()
    return ClipBundle(folder.name, model, preprocess, tokenizer)
