"""Few-step (distilled) models end to end on tiny random-weight components: the LCM / TCD /
sCM samplers, timestep spacing and explicit timesteps, SANA, SANA-Sprint, PixArt-α and LCM
students, and distillation LoRAs that declare the sampler they need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthgen.generators.adapters import AdapterError, declared_sampling
from synthgen.generators.regenerate import Inputs, regenerate
from synthgen.pipelines.build import run_build
from synthgen.pipelines.resolve import resolve
from synthgen.schemas.recipe import RecipeError, SamplingSpec, load_recipe, recipe_from_dict
from synthgen.validators.corpus import validate_dir
from tests.conftest import tiny_recipe_dict, write_recipe
from tests.generators.families import make_snapshot
from tests.generators.test_adapters import make_lora
from tests.generators.test_families import _first_provenance, _image, _recipe

SNAPSHOTS = ("sd", "sd-lcm", "lcm", "pixart-alpha", "sana", "sana-sprint")


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fewstep")
    marker = root / "UNPICKLED"
    for family in SNAPSHOTS:
        make_snapshot(family, root / family, marker)
    return root, marker


SMALL = {"height": 16, "width": 16}
SANA = {"height": 32, "width": 32}

# (snapshot, sampling, pipeline class, effective scheduler class)
CASES = {
    "sd-lcm-native": (
        "sd-lcm",
        {**SMALL, "guidance_scale": 1.0},
        "StableDiffusionPipeline",
        "LCMScheduler",
    ),
    "sd-tcd-eta": (
        "sd",
        {**SMALL, "scheduler": "tcd", "eta": 0.3, "guidance_scale": 1.0},
        "StableDiffusionPipeline",
        "TCDScheduler",
    ),
    "sd-euler-trailing": (
        "sd",
        {**SMALL, "scheduler": "euler", "timestep_spacing": "trailing"},
        "StableDiffusionPipeline",
        "EulerDiscreteScheduler",
    ),
    "lcm-timesteps": (
        "lcm",
        {**SMALL, "scheduler": "lcm", "timesteps": [999, 499], "guidance_scale": 8.0},
        "LatentConsistencyModelPipeline",
        "LCMScheduler",
    ),
    "pixart-alpha": ({**SMALL}, None, "PixArtAlphaPipeline", "DPMSolverMultistepScheduler"),
    "sana": ({**SANA}, None, "SanaPipeline", "FlowMatchEulerDiscreteScheduler"),
    "sana-sprint-scm": (
        "sana-sprint",
        {**SANA, "scheduler": "scm", "guidance_scale": 4.5, "negative_prompt": ""},
        "SanaSprintPipeline",
        "SCMScheduler",
    ),
}


def _case(name: str) -> tuple[str, dict[str, Any], str, str]:
    snap, sampling, pipeline_class, scheduler_class = CASES[name]
    if isinstance(snap, dict):  # the case is named after its snapshot
        snap, sampling = name, snap
    assert isinstance(snap, str) and isinstance(sampling, dict)
    return snap, sampling, pipeline_class, scheduler_class


@pytest.mark.parametrize("case", list(CASES))
def test_few_step_family_builds_validates_and_regenerates(
    case: str, snapshots: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    root, marker = snapshots
    snap, sampling, pipeline_class, scheduler_class = _case(case)
    recipe = _recipe(tmp_path, model_dir, root / snap, **sampling)
    out = tmp_path / "out"
    run_build(recipe, out, show_progress=False)
    assert validate_dir(out).ok
    prov = _first_provenance(out)
    assert prov["pipeline_class"] == pipeline_class
    assert prov["scheduler"] == sampling.get("scheduler", "native")
    config = _json(prov["scheduler_config"])
    assert config["class"] == scheduler_class
    if "timestep_spacing" in sampling:
        assert config["timestep_spacing"] == sampling["timestep_spacing"]
    options = _json(prov["generation_options"])
    assert options.get("timesteps") == sampling.get("timesteps")
    assert options.get("eta") == sampling.get("eta")
    assert regenerate(prov, Inputs.for_build(out)) == _image(out, prov["key"])
    assert not marker.exists(), "a pickle was unpickled"


def _json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def test_trailing_spacing_changes_the_images(
    snapshots: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    root, _ = snapshots
    images = []
    for spacing in ("leading", "trailing"):
        work = tmp_path / spacing
        work.mkdir()
        sampling = {**SMALL, "scheduler": "euler", "timestep_spacing": spacing}
        recipe = _recipe(work, model_dir, root / "sd", **sampling)
        run_build(recipe, work / "out", show_progress=False)
        prov = _first_provenance(work / "out")
        images.append(_image(work / "out", prov["key"]))
    assert images[0] != images[1]


@pytest.mark.parametrize(
    ("snap", "sampling", "message"),
    [
        ("sd", {"scheduler": "scm"}, r"scheduler: 'scm' is a trigflow sampler.*\(sd,"),
        ("sana-sprint", {"scheduler": "flow-match-euler"}, r"flow sampler.*\(sana-sprint,"),
        ("sana-sprint", {"scheduler": "lcm"}, r"'lcm' is a diffusion sampler.*\(sana-sprint,"),
        ("lcm", {"scheduler": "ddim"}, r"'ddim' does not work with LatentConsistencyModel"),
        ("sana-sprint", {"steps": 8}, r"sampling.steps: SanaSprintPipeline.*1-4 steps; got 8"),
        ("sana-sprint", {"negative_prompt": "blurry"}, r"negative_prompt: SanaSprintPipeline"),
        ("sd", {"scheduler": "ddim", "timesteps": [999, 499]}, r"timesteps: 'ddim' \(DDIM"),
        ("sana-sprint", {"scheduler": "scm", "timesteps": [999, 499]}, r"SCMScheduler\) takes"),
        ("sd", {"scheduler": "lcm", "timestep_spacing": "trailing"}, r"'lcm' \(LCMScheduler\)"),
        ("sd", {"scheduler": "euler", "eta": 0.3}, r"sampling.eta: .*'euler' takes none"),
        ("sd", {"scheduler": "euler", "timesteps": [999, 499], "steps": 3}, r"2 timesteps"),
        ("pixart-alpha", {"max_sequence_length": 200}, r"at most 120 tokens; got 200"),
        ("sana", {"height": 48, "width": 48}, r"SanaPipeline \(sana.*multiples of 32"),
    ],
)
def test_wrong_few_step_option_is_refused_before_loading(
    snap: str,
    sampling: dict[str, Any],
    message: str,
    snapshots: tuple[Path, Path],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from synthgen.generators import model_folder

    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(model_folder, "load_pipeline", no_loading)
    root, _ = snapshots
    base = SANA if snap.startswith("sana") else SMALL
    recipe = _recipe(tmp_path, model_dir, root / snap, **{**base, **sampling})
    with pytest.raises(RecipeError, match=message):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_timesteps_are_checked_and_hashed_only_when_given() -> None:
    assert SamplingSpec(steps=4, timesteps=[999, 749, 499, 249]).timesteps == [999, 749, 499, 249]
    for bad, message in (([999, 999], "strictly decreasing"), ([1000, 10], "outside")):
        with pytest.raises(ValueError, match=message):
            SamplingSpec(steps=2, timesteps=bad)
    with pytest.raises(ValueError, match="timestep_spacing"):
        SamplingSpec(timestep_spacing="sideways")  # type: ignore[arg-type]
    data = tiny_recipe_dict(Path("models"))
    plain = recipe_from_dict(data)
    spelled = {**data["sampling"], "timestep_spacing": None, "timesteps": None, "eta": None}
    assert recipe_from_dict({**data, "sampling": spelled}).hash == plain.hash
    given = {**data["sampling"], "scheduler": "lcm", "timesteps": [999, 499]}
    assert recipe_from_dict({**data, "sampling": given}).hash != plain.hash


# -- distillation LoRAs --------------------------------------------------------------------


def _declare(path: Path, **metadata: str) -> Path:
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata={"format": "pt", **metadata})
    return path


def _lora_recipe(
    tmp: Path, model_dir: Path, lora: Path | None, entry: dict | None = None, **sampling: Any
) -> Path:
    """A tiny recipe with `lora` as its one adapter (`entry`: the adapter's recipe entry)."""
    data = tiny_recipe_dict(model_dir)
    data["model"] = {"path": str(model_dir / "sd"), "compute_batch": 2}
    data["sampling"] = {**data["sampling"], **SMALL, "negative_prompt": "", **sampling}
    data["classes"] = data["classes"][:2]
    data["count_per_class"] = 2
    data["checks"] = {"clip_score": None}
    if lora is not None:
        data["adapters"] = [entry or {"path": str(lora)}]
    tmp.mkdir(parents=True, exist_ok=True)
    return write_recipe(tmp / "recipe.yaml", data)


def _resolved(recipe: Path) -> Any:
    loaded, base_dir = load_recipe(recipe)
    return resolve(loaded, base_dir)


@pytest.fixture(scope="module")
def lcm_lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lcm_lora")
    return _declare(make_lora(model_dir / "sd", root / "lcm_lora.safetensors"), sampler="lcm")


def test_an_lcm_lora_changes_images_identity_and_provenance(
    lcm_lora: Path, model_dir: Path, tmp_path: Path
) -> None:
    lcm = {"scheduler": "lcm", "guidance_scale": 1.0}
    plain = _lora_recipe(tmp_path / "plain", model_dir, None, **lcm)
    with_lora = _lora_recipe(tmp_path / "lora", model_dir, lcm_lora, **lcm)
    outs = {}
    for name, recipe in (("plain", plain), ("lora", with_lora)):
        outs[name] = tmp_path / name / "out"
        run_build(recipe, outs[name], show_progress=False)
        assert validate_dir(outs[name]).ok
    ids = {"plain": _resolved(plain).identity(), "lora": _resolved(with_lora).identity()}
    assert ids["lora"] != ids["plain"] and "adapter_all_0_sha256" in ids["lora"]
    prov = _first_provenance(outs["lora"])
    table = _json(prov["adapters"])
    assert table["all"][0]["sampler"] == "lcm"
    assert _image(outs["lora"], prov["key"]) != _image(outs["plain"], prov["key"])
    assert regenerate(prov, Inputs.for_build(outs["lora"])) == _image(outs["lora"], prov["key"])


def test_a_distillation_lora_refuses_another_sampler(
    lcm_lora: Path, model_dir: Path, tmp_path: Path
) -> None:
    recipe = _lora_recipe(tmp_path, model_dir, lcm_lora, scheduler="dpm-solver++")
    with pytest.raises(AdapterError, match=r"lcm_lora.safetensors: .*'lcm' sampler.*'dpm-solver"):
        _resolved(recipe)
    native = _lora_recipe(tmp_path / "native", model_dir, lcm_lora, scheduler="native")
    with pytest.raises(AdapterError, match=r"samples with 'native' \(DDPMScheduler\)"):
        _resolved(native)


def test_a_hyper_sd_lora_declares_trailing_spacing(model_dir: Path, tmp_path: Path) -> None:
    lora = make_lora(model_dir / "sd", tmp_path / "hyper.safetensors", seed=1)
    _declare(lora, sampler="ddim", timestep_spacing="trailing")
    assert declared_sampling(lora) == {"sampler": "ddim", "timestep_spacing": "trailing"}
    leading = _lora_recipe(tmp_path / "a", model_dir, lora, scheduler="ddim")
    with pytest.raises(AdapterError, match=r"hyper.safetensors: samples with 'trailing'"):
        _resolved(leading)
    trailing = _lora_recipe(
        tmp_path / "b", model_dir, lora, scheduler="ddim", timestep_spacing="trailing"
    )
    resolved = _resolved(trailing)
    assert resolved.scheduler_config is not None
    assert resolved.scheduler_config["timestep_spacing"] == "trailing"
    assert _json(resolved.adapters)["all"][0]["timestep_spacing"] == "trailing"


def test_a_published_lora_without_metadata_takes_its_sampler_from_the_recipe(
    model_dir: Path, tmp_path: Path
) -> None:
    # LCM-LoRA, TCD-LoRA, Hyper-SD as published declare nothing: the recipe's entry does
    lora = make_lora(model_dir / "sd", tmp_path / "published_hyper.safetensors", seed=2)
    assert declared_sampling(lora) == {"sampler": None, "timestep_spacing": None}
    entry = {"path": str(lora), "sampler": "ddim", "timestep_spacing": "trailing"}

    def recipe(where: str, **sampling: Any) -> Path:
        return _lora_recipe(tmp_path / where, model_dir, lora, entry, **sampling)

    with pytest.raises(AdapterError, match=r"published_hyper.safetensors: .*'ddim' sampler.*'lcm'"):
        _resolved(recipe("lcm", scheduler="lcm"))
    with pytest.raises(AdapterError, match=r"published_hyper.safetensors: samples with 'trailing'"):
        _resolved(recipe("leading", scheduler="ddim"))
    resolved = _resolved(recipe("ddim", scheduler="ddim", timestep_spacing="trailing"))
    (ref,) = _json(resolved.adapters)["all"]
    assert (ref["sampler"], ref["timestep_spacing"]) == ("ddim", "trailing")
    # a file that declares one sampler and a recipe that says another: refused by name
    _declare(lora, sampler="lcm")
    with pytest.raises(AdapterError, match=r"declares sampler 'lcm'; the recipe's adapter says"):
        _resolved(recipe("both", scheduler="ddim", timestep_spacing="trailing"))
    # the entry docs/models.md shows is one the recipe model takes
    from synthgen.schemas.recipe.model import AdapterSpec

    doc = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    (shown,) = [b for b in doc.split("```yaml")[1:] if "sampler:" in b.split("```")[0]]
    (spec,) = yaml.safe_load(shown.split("```")[0])["adapters"]
    assert AdapterSpec(**spec).sampler == "ddim"
    magic = _lora_recipe(tmp_path / "magic", model_dir, lora, {**entry, "sampler": "magic"})
    with pytest.raises(RecipeError, match=r"sampler 'magic'"):
        load_recipe(magic)


def test_a_lora_declaring_an_unknown_sampler_is_refused(model_dir: Path, tmp_path: Path) -> None:
    lora = _declare(make_lora(model_dir / "sd", tmp_path / "odd.safetensors"), sampler="magic")
    with pytest.raises(AdapterError, match=r"odd.safetensors: declares sampler 'magic'"):
        declared_sampling(lora)


def test_cfg_above_a_few_step_students_range_is_warned_by_name(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = _lora_recipe(tmp_path, model_dir, None, scheduler="lcm", guidance_scale=7.5)
    with caplog.at_level("WARNING", logger="synthgen.generators.model_folder"):
        _resolved(recipe)
    assert "guidance_scale 7.5 with LCMScheduler on StableDiffusionPipeline" in caplog.text
    caplog.clear()
    calm = _lora_recipe(tmp_path / "calm", model_dir, None, scheduler="lcm", guidance_scale=1.5)
    with caplog.at_level("WARNING", logger="synthgen.generators.model_folder"):
        _resolved(calm)
    assert "LCMScheduler" not in caplog.text


def test_a_turbo_snapshot_is_known_by_its_name_and_its_conventions_warned(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from synthgen.generators.model_folder import adversarial_student, inspect_folder
    from synthgen.generators.random_pipelines import save_snapshot

    hub = tmp_path / "hub" / "models--stabilityai--sdxl-turbo" / "snapshots" / "0a1b2c"
    turbo = save_snapshot("sdxl", hub, seed=0)
    config = json.loads((turbo / "scheduler" / "scheduler_config.json").read_text())
    config.update(_class_name="EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
    (turbo / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    plain = save_snapshot("sdxl", tmp_path / "sdxl-base", seed=0)
    assert adversarial_student(inspect_folder(turbo)) == "Turbo"
    assert adversarial_student(inspect_folder(plain)) is None

    def warned(folder: Path, **sampling: Any) -> str:
        data = tiny_recipe_dict(model_dir)
        data["model"] = {"path": str(folder), "compute_batch": 2}
        data["sampling"] = {**data["sampling"], **SMALL, "negative_prompt": "", **sampling}
        where = tmp_path / f"r{len(list(tmp_path.glob('r*')))}"
        where.mkdir()
        caplog.clear()
        with caplog.at_level("WARNING", logger="synthgen.generators.model_folder"):
            _resolved(write_recipe(where / "recipe.yaml", data))
        return caplog.text

    loud = warned(
        turbo, scheduler="euler", steps=20, guidance_scale=7.5, timestep_spacing="leading"
    )
    assert "0a1b2c (a Turbo student, by its name)" in loud  # the hub repository's name
    assert "samples without classifier-free guidance; set 0" in loud
    assert "sampling.steps 20:" in loud and "distilled for 1-8 steps" in loud
    assert (
        "timestep spacing 'leading'" in loud and "set sampling.timestep_spacing: trailing" in loud
    )
    assert warned(turbo, scheduler="native", steps=1, guidance_scale=0.0) == ""
    assert warned(plain, scheduler="euler", steps=20, guidance_scale=7.5) == ""


def test_a_long_prompt_for_pixart_sigma_is_warned_about_not_refused(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PixArt-Sigma recipes with prompts past its trained 300 tokens built before the limit
    was checked: they still build (and resume), with a warning; PixArt-alpha's is refused."""
    from synthgen.generators.families import FAMILIES, check_recipe_options
    from synthgen.schemas.recipe import RecipeError, recipe_from_dict
    from tests.conftest import tiny_recipe_dict

    data = tiny_recipe_dict(model_dir)
    data["sampling"] = {**data["sampling"], "max_sequence_length": 512, "height": 32, "width": 32}
    recipe = recipe_from_dict(data)
    with caplog.at_level("WARNING"):
        check_recipe_options(recipe, "PixArtSigmaPipeline", FAMILIES["PixArtSigmaPipeline"])
    assert "at most 300 tokens; got 512" in caplog.text
    with pytest.raises(RecipeError, match="at most 120 tokens; got 512"):
        check_recipe_options(recipe, "PixArtAlphaPipeline", FAMILIES["PixArtAlphaPipeline"])
