"""Small open_clip models from our own config JSON (configuration as data, weights separate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_clip(name: str, config: dict[str, Any], config_dir: Path) -> Any:
    """Write `<name>.json` to config_dir, register it, and build a randomly initialised model."""
    import open_clip

    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{name}.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    open_clip.add_model_config(path)
    model = open_clip.create_model(name, pretrained=None)
    return model


def save_clip(model: Any, name: str, folder: Path) -> Path:
    """Save weights as `<name>.safetensors` beside `<name>.json`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    return path


def make_random_clip(
    folder: Path, name: str = "tiny-clip", config: dict[str, Any] | None = None, seed: int = 0
) -> Path:
    import torch

    torch.manual_seed(seed)
    model = build_clip(name, config or TINY_CLIP_CONFIG, folder)
    save_clip(model, name, folder)
    return folder
