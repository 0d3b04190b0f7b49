"""Licence and usage metadata, and the manifest entries governance adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.schemas.manifest import UsageInfo, WatermarkInfo
from synthgen.schemas.recipe import RecipeError
from synthgen.storage.model_card import LicenseError, license_info, model_card_license
from synthgen.storage.watermark import watermark_info

HASH = "ab12cd34" + "0" * 56


def card(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(text, encoding="utf-8")
    return folder


def test_model_card_licence_must_be_acknowledged(tmp_path: Path) -> None:
    folder = card(tmp_path / "m", "---\nlicense: creativeml-openrail-m\ntags: [x]\n---\n# model\n")
    assert model_card_license(folder) == "creativeml-openrail-m"
    with pytest.raises(LicenseError, match=r"model\.license_ack: 'creativeml-openrail-m'"):
        license_info(folder, None, None, None)
    with pytest.raises(RecipeError):  # the CLI reports it as a recipe error
        license_info(folder, None, "mit", None)
    info = license_info(folder, None, "CreativeML-OpenRAIL-M", "research only")
    assert info == {
        "license": "creativeml-openrail-m",
        "license_source": "model_card",
        "usage": "research only",
    }
    assert UsageInfo.model_validate(info).license == "creativeml-openrail-m"


def test_licence_from_the_recipe_when_there_is_no_card(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert model_card_license(bare) is None
    assert license_info(bare, "apache-2.0", None, None)["license_source"] == "recipe"
    assert license_info(bare, None, None, None)["license"] is None
    no_front = card(tmp_path / "plain", "# just a title\nlicense: mit\n")
    assert model_card_license(no_front) is None
    hostile = card(tmp_path / "hostile", "---\nlicense: !!python/object:os.system ls\n---\n")
    assert model_card_license(hostile) is None  # safe YAML only


def test_watermark_manifest_entry_records_a_skip_once() -> None:
    small = WatermarkInfo.model_validate(watermark_info(HASH, 16, 16))
    assert small.skipped is not None and "16x16" in small.skipped
    assert small.payload == "5347ab12cd34"
    large = WatermarkInfo.model_validate(watermark_info(HASH, 512, 512))
    assert large.skipped is None and large.method == "dwtDct"


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_a_lossy_format_that_erases_the_watermark_is_refused_before_any_work(
    model_dir: Path, fmt: str
) -> None:
    from synthgen.pipelines.resolve import resolve
    from synthgen.schemas.recipe import recipe_from_dict
    from tests.conftest import tiny_recipe_dict

    data = tiny_recipe_dict(model_dir)
    data["sampling"] = {**data["sampling"], "height": 256, "width": 256}
    data["output"] = {"shard_size": 5, "image_format": fmt, "quality": 95}
    with pytest.raises(RecipeError, match=f"image_format {fmt} .*does not survive"):
        resolve(recipe_from_dict(data), Path.cwd())
    data["output"]["image_format"] = "png"
    assert resolve(recipe_from_dict(data), Path.cwd()).recipe.output.image_format == "png"
