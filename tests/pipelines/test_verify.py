"""`synthgen verify`: manifest sha256 and watermark of images, tars and build directories."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from synthgen.generators.sd_layout import make_random_pipeline
from synthgen.pipelines.build import run_build
from synthgen.pipelines.cli import main
from synthgen.pipelines.verify import VerifyError, verify
from synthgen.storage.watermark import embed_watermark, watermark_payload
from tests.conftest import TINY_SD, tiny_recipe_dict


def watermarked_recipe(model_dir: Path, seed: int) -> dict[str, Any]:
    data = tiny_recipe_dict(model_dir, seed=seed, count_per_class=1)
    data["sampling"] = {**data["sampling"], "height": 256, "width": 256}
    data["checks"] = {"clip_score": None, "exact_duplicate": False}
    return data


@pytest.fixture(scope="module")
def builds(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """A 256x256 build whose images carry its watermark, as every build embeds it (three
    images). Its model is the tiny one with an 8x VAE, as Stable Diffusion's: the UNet's
    attention then runs on 32x32 latents, not 128x128 (50 s of a 2x VAE's build)."""
    root = tmp_path_factory.mktemp("verify")
    models = root / "models"
    make_random_pipeline(
        models / "sd", dataclasses.replace(TINY_SD, image_size=256, vae_channels=(8, 16, 16, 16))
    )
    (models / "clip").symlink_to(model_dir / "clip")
    model_dir = models
    outs = [
        run_build(watermarked_recipe(model_dir, seed), root / f"b{seed}", show_progress=False)
        for seed in (1,)
    ]
    for out in outs:
        manifest = json.loads((out.output / "manifest.json").read_text())
        mark = manifest["watermark"]
        assert mark.get("skipped") is None and mark["payload"], mark
    yield [o.output for o in outs]


def pixels_of(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def first_image(build: Path) -> bytes:
    for tar in sorted(build.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".png"):
                    return t.extractfile(m).read()  # type: ignore[union-attr]
    raise AssertionError("no image")


def test_build_directory_and_tar_verify(
    builds: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result = verify(builds[0])
    assert result.ok and len(result.images) == 3
    assert all(i.watermark == "ok" and i.in_manifest for i in result.images)
    assert main(["verify", str(builds[0]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["recipe_hash"] == result.recipe_hash
    tar = sorted(builds[0].glob("*.tar"))[0]
    assert verify(tar).ok


def test_extracted_image_verifies_and_lossless_resave_keeps_the_watermark(
    builds: list[Path], tmp_path: Path
) -> None:
    data = first_image(builds[0])
    exact = tmp_path / "exact.png"
    exact.write_bytes(data)
    assert verify(exact, builds[0]).ok
    resaved = tmp_path / "resaved.png"
    Image.open(io.BytesIO(data)).save(resaved, format="PNG", compress_level=9)
    result = verify(resaved, builds[0]).images[0]
    assert result.watermark == "ok"  # the watermark survives a lossless re-save
    assert not result.in_manifest and not result.ok  # the bytes are not the build's


def test_tampered_and_foreign_images_fail(builds: list[Path], tmp_path: Path) -> None:
    data = first_image(builds[0])
    appended = tmp_path / "appended.png"
    appended.write_bytes(data + b"\x00tampered")
    assert not verify(appended, builds[0]).images[0].in_manifest
    pixels = pixels_of(data)
    pixels[:8, :8] = 255 - pixels[:8, :8]  # one pixel block changed
    block = tmp_path / "block.png"
    Image.fromarray(pixels).save(block)
    assert not verify(block, builds[0]).ok
    # another build's image: what the encoding step makes with another recipe's payload
    other = embed_watermark(pixels_of(data), watermark_payload("feedbeef" + "0" * 56))
    foreign = tmp_path / "foreign.png"
    Image.fromarray(other).save(foreign)
    result = verify(foreign, builds[0]).images[0]
    assert not result.ok and not result.in_manifest
    assert result.watermark == "watermark of another build"
    assert main(["verify", str(foreign), "--build", str(builds[0])]) == 1


def test_a_changed_shard_fails_and_unknown_paths_are_clear_errors(
    builds: list[Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(builds[0], copy)
    parquet = sorted(copy.glob("*.parquet"))[0]
    parquet.write_bytes(parquet.read_bytes() + b"x")
    result = verify(copy)
    assert not result.ok and any("sha256 differs" in p for p in result.problems)
    lone = tmp_path / "lone.png"
    lone.write_bytes(first_image(builds[0]))
    with pytest.raises(VerifyError, match="--build"):
        verify(lone)
    assert main(["verify", str(tmp_path / "missing.png")]) == 1
