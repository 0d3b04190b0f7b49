"""Tiny real inputs for scorer, writer and report tests: random PNG samples and recipes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from synthgen.schemas.media import image_media
from synthgen.schemas.recipe import Recipe, recipe_from_dict
from synthgen.schemas.records import GenerationRequest, Sample
from tests.conftest import SPLIT_THRESHOLD, shared_build, tiny_recipe_dict, write_recipe

CLASSES = ("zero", "one", "two")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_samples(n: int, seed: int = 0, size: int = 32) -> list[Sample]:
    """`n` samples over three classes, each a random smooth-ish RGB image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = i % len(CLASSES)
        base = rng.integers(0, 256, (size // 4, size // 4, 3))
        pixels = np.kron(base, np.ones((4, 4, 1)))
        data = png(pixels)
        key = f"tiny-{CLASSES[cls]}-{i:06d}"
        request = GenerationRequest(
            key, i // 5, i, cls, CLASSES[cls], f"a handwritten digit {cls}", "", 1000 + i
        )
        media = image_media(data, "png", size, size)
        out.append(Sample(request, hashlib.sha256(data).hexdigest(), media))
    return out


def recipe_with(model_dir: Path, **overrides: Any) -> Recipe:
    return recipe_from_dict(tiny_recipe_dict(model_dir, **overrides))


def scoring(model_dir: Path, *names: str, batch_size: int = 4) -> dict[str, Any]:
    return {
        "clip_model": str(model_dir / "clip"),
        "batch_size": batch_size,
        "scorers": [{"name": n} for n in names],
    }


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A tiny build with every bundled scorer, checks that split it, and its report; made
    once for every xdist worker and shared by the corpus, report and gate tests, which read
    it or copy it first."""
    from synthgen.pipelines.build import run_build

    data = tiny_recipe_dict(model_dir)
    data["checks"] = {
        "clip_score": {"absolute": SPLIT_THRESHOLD},
        "near_duplicate": {"max_distance": 2},
        "low_information": {"absolute": 0.5},
    }
    # every bundled scorer, so validation and the report cover a vector column too
    data["scoring"]["scorers"] = [
        {"name": "clip"},
        {"name": "clip_embedding"},
        {"name": "image_stats"},
    ]

    def make(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        run_build(write_recipe(tmp / "recipe.yaml", data), tmp / "out", show_progress=False)

    return shared_build(tmp_path_factory, "corpus", make, done="out/manifest.json") / "out"
