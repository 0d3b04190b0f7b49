"""Every supported diffusers family, end to end: a stock-looking snapshot -> build -> a corpus
that validates and regenerates byte for byte, with no pickle ever unpickled."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from synthgen.generators.regenerate import Inputs, regenerate
from synthgen.pipelines.build import run_build
from synthgen.schemas.recipe import RecipeError
from synthgen.validators.corpus import validate_dir
from tests.conftest import tiny_recipe_dict, write_recipe
from tests.generators.families import make_snapshot

# family -> (pipeline class, effective scheduler class with `scheduler: native`)
FAMILIES = {
    "sd": ("StableDiffusionPipeline", "PNDMScheduler"),
    "sd-v": ("StableDiffusionPipeline", "PNDMScheduler"),
    "sdxl": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler"),
    "sd3": ("StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler"),
    "flux": ("FluxPipeline", "FlowMatchEulerDiscreteScheduler"),
    "pixart-sigma": ("PixArtSigmaPipeline", "DPMSolverMultistepScheduler"),
}


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("snapshots")
    marker = root / "UNPICKLED"
    for family in FAMILIES:
        make_snapshot(family, root / family, marker)
    return root, marker


def _recipe(tmp: Path, model_dir: Path, model: Path, **sampling: Any) -> Path:
    data = tiny_recipe_dict(model_dir)
    data["model"] = {"path": str(model), "compute_batch": 2, "license_ack": "other"}
    data["sampling"] = {
        "scheduler": "native",
        "steps": 2,
        "guidance_scale": 2.0,
        "height": 32,
        "width": 32,
        "negative_prompt": "",
        **sampling,
    }
    data["classes"] = data["classes"][:2]
    data["count_per_class"] = 2
    data["checks"] = {"clip_score": None}
    return write_recipe(tmp / "recipe.yaml", data)


def _first_provenance(out: Path) -> dict[str, Any]:
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    return json.loads(tf.extractfile(m).read())  # type: ignore[union-attr]
    raise AssertionError(f"{out}: no sample in any tar")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_builds_validates_and_regenerates(
    family: str, snapshots: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    root, marker = snapshots
    extra = {"negative_prompt": "blurry"} if family != "flux" else {}
    recipe = _recipe(tmp_path, model_dir, root / family, **extra)
    out = tmp_path / "out"
    run_build(recipe, out, show_progress=False)
    assert validate_dir(out).ok
    prov = _first_provenance(out)
    pipeline_class, scheduler_class = FAMILIES[family]
    assert prov["pipeline_class"] == pipeline_class
    assert prov["scheduler_config"]["class"] == scheduler_class
    assert regenerate(prov, Inputs.for_build(out)) == _image(out, prov["key"])
    assert not marker.exists(), "a pickle was unpickled"


def _image(out: Path, key: str) -> bytes:
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                image = m.name.endswith((".png", ".webp", ".jpg"))
                if image and m.name.startswith(key + "."):
                    return tf.extractfile(m).read()  # type: ignore[union-attr]
    raise AssertionError(key)


@pytest.mark.parametrize(
    ("family", "sampling", "message"),
    [
        ("flux", {"negative_prompt": "blurry"}, r"negative_prompt: FluxPipeline \(flux"),
        ("sd", {"scheduler": "flow-match-euler"}, r"scheduler: 'flow-match-euler'.*\(sd,"),
        ("sd3", {"scheduler": "dpm-solver++"}, r"scheduler: 'dpm-solver\+\+'.*\(sd3,"),
        ("flux", {"scheduler": "euler"}, r"scheduler: 'euler'.*\(flux,"),
        ("flux", {"scheduler": "flow-match-heun"}, r"flow-match-heun.*FluxPipeline.*sigmas"),
        ("sdxl", {"max_sequence_length": 64}, r"max_sequence_length: .*\(sdxl"),
    ],
)
def test_family_incompatible_option_is_refused_before_loading(
    family: str,
    sampling: dict[str, Any],
    message: str,
    snapshots: tuple[Path, Path],
    model_dir: Path,
    tmp_path: Path,
) -> None:
    root, _ = snapshots
    recipe = _recipe(tmp_path, model_dir, root / family, **sampling)
    with pytest.raises(RecipeError, match=message):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_sd3_swaps_within_the_flow_family_with_a_t5_length(
    snapshots: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    root, marker = snapshots
    recipe = _recipe(
        tmp_path, model_dir, root / "sd3", scheduler="flow-match-heun", max_sequence_length=16
    )
    run_build(recipe, tmp_path / "out", show_progress=False)
    assert validate_dir(tmp_path / "out").ok
    prov = _first_provenance(tmp_path / "out")
    assert prov["scheduler_config"]["class"] == "FlowMatchHeunDiscreteScheduler"
    assert not marker.exists()


def test_flux_sizes_follow_vae_factor_and_latent_packing(
    snapshots: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    from synthgen.generators.model_folder import inspect_folder
    from synthgen.pipelines.resolve import _size_multiple

    root, _ = snapshots
    folder = tmp_path / "flux"
    shutil.copytree(root / "flux", folder)
    checked = inspect_folder(folder)
    assert _size_multiple(checked) == 2  # one VAE block (factor 1) x 2x2 packing
    config = folder / "vae" / "config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "block_out_channels": [4, 4, 4, 4]})
    )
    assert _size_multiple(checked) == 16  # the real Flux VAE: factor 8 x 2


def test_every_supported_class_name_is_a_diffusers_pipeline() -> None:
    """Resolve trusts a class name it supports without importing diffusers: each must be one."""
    import diffusers

    from synthgen.generators.families import FAMILIES as SUPPORTED

    for name in SUPPORTED:
        cls = getattr(diffusers, name)
        assert isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline), name
