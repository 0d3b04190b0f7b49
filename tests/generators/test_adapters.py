"""LoRA and textual-inversion adapters: checked before generation, applied per class,
recorded in provenance and identity; per-class LoRAs trained in a balancing build."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthgen.generators import lora_training, model_folder
from synthgen.generators.adapters import (
    AdapterError,
    activate,
    apply_adapters,
    check_adapter,
    dump_table,
)
from synthgen.generators.regenerate import Inputs, find_provenance, regenerate
from synthgen.pipelines.build import BuildError, run_build
from synthgen.pipelines.resolve import resolve
from synthgen.schemas.manifest import MANIFEST_NAME, Manifest
from synthgen.schemas.recipe import AdapterSpec, RecipeError, load_recipe, recipe_from_dict
from synthgen.validators.corpus import validate_dir
from tests.conftest import read_rows, tiny_recipe_dict

ROOT = Path(__file__).resolve().parents[2]
DIGITS_LDM = ROOT / "models" / "digits-ldm"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def make_lora(model: Path, out: Path, rank: int = 2, seed: int = 0) -> Path:
    """A random-weight LoRA on a pipeline folder's UNet, saved by diffusers as safetensors."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(model / "unet"), use_safetensors=True)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the LoRA change something
                p.normal_(0.0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(out.parent), unet_lora_layers=layers, weight_name=out.name
    )
    return out


def make_embedding(out: Path, token: str, width: int = 16, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({token: torch.randn(1, width, generator=g)}, str(out))
    return out


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "lora": make_lora(model_dir / "sd", root / "tiny_lora.safetensors"),
        "other": make_lora(DIGITS_LDM, root / "digits_lora.safetensors"),
        "embedding": make_embedding(root / "ink.safetensors", "<ink>"),
        "wide": make_embedding(root / "wide.safetensors", "<wide>", width=32),
    }


def _images(out: Path) -> dict[str, bytes]:
    images = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith((".png", ".json")):
                    f = tf.extractfile(m)
                    assert f is not None
                    images[m.name] = f.read()
    return images


# -- checking ------------------------------------------------------------------------------


def test_a_lora_is_checked_against_the_model(model_dir: Path, adapters: dict[str, Path]) -> None:
    sd = model_dir / "sd"
    ref = check_adapter(
        AdapterSpec(path=str(adapters["lora"]), scale=0.7), Path("."), sd, "StableDiffusionPipeline"
    )
    assert ref.kind == "lora" and ref.scale == 0.7 and len(ref.sha256) == 64
    with pytest.raises(AdapterError, match=r"digits_lora.safetensors: a LoRA for another model"):
        check_adapter(
            AdapterSpec(path=str(adapters["other"])), Path("."), sd, "StableDiffusionPipeline"
        )
    emb = check_adapter(
        AdapterSpec(kind="textual_inversion", path=str(adapters["embedding"])),
        Path("."),
        sd,
        "StableDiffusionPipeline",
    )
    assert emb.token == "<ink>"
    with pytest.raises(AdapterError, match=r"wide.safetensors: an embedding for another model"):
        check_adapter(
            AdapterSpec(kind="textual_inversion", path=str(adapters["wide"])),
            Path("."),
            sd,
            "StableDiffusionPipeline",
        )


def test_loras_switch_per_call_and_off_is_the_base_model(
    model_dir: Path, adapters: dict[str, Path]
) -> None:
    import torch

    sd = model_dir / "sd"
    ref = check_adapter(
        AdapterSpec(path=str(adapters["lora"])), Path("."), sd, "StableDiffusionPipeline"
    )
    pipe = model_folder.load_pipeline(sd, "native", "float32", "cpu", 1)

    def image() -> np.ndarray:
        g = [torch.Generator().manual_seed(3)]
        out = pipe(prompt=["a digit"], num_inference_steps=2, generator=g, output_type="np")
        return np.asarray(out.images)

    base = image()
    apply_adapters(pipe, dump_table([], {"one": [ref]}))
    assert np.array_equal(image(), base)  # loaded but off: the base model's bytes
    activate(pipe, ((ref.name, 1.0),))
    on = image()
    assert not np.array_equal(on, base)
    activate(pipe, ())
    assert np.array_equal(image(), base)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"nowhere.safetensors: adapter file not found"),
        ("pickle", r"fake.safetensors: .*safetensors"),
        ("other", r"digits_lora.safetensors: a LoRA for another model"),
        ("wide", r"wide.safetensors: an embedding for another model"),
    ],
)
def test_bad_adapters_are_refused_before_any_generation(
    tmp_path: Path,
    model_dir: Path,
    adapters: dict[str, Path],
    loads: list[str],
    case: str,
    message: str,
) -> None:
    if case == "pickle":
        path = tmp_path / "fake.safetensors"
        path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle under a safetensors name
    elif case == "missing":
        path = tmp_path / "nowhere.safetensors"
    else:
        path = adapters[case]
    kind = "textual_inversion" if case == "wide" else "lora"
    data = tiny_recipe_dict(model_dir, adapters=[{"kind": kind, "path": str(path)}])
    with pytest.raises(AdapterError, match=message):
        run_build(data, tmp_path / "out", show_progress=False)
    assert loads == []
    assert not (tmp_path / "out").exists()


def test_a_non_safetensors_adapter_is_refused_when_the_recipe_is_read(model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["classes"][1]["adapters"] = [{"path": "/models/style.bin"}]
    with pytest.raises(RecipeError, match=r"/models/style.bin: adapters are loaded from "):
        recipe_from_dict(data)


def test_the_bundled_lora_balancing_recipe_reads() -> None:
    recipe, _ = load_recipe(ROOT / "recipes" / "digits-balance-lora.yaml")
    assert recipe.balance is not None and recipe.balance.trains_lora
    assert recipe.balance.lora_settings.rank == 4


def test_adapter_content_is_part_of_the_identity(
    tmp_path: Path, model_dir: Path, adapters: dict[str, Path]
) -> None:
    lora = shutil.copy(adapters["lora"], tmp_path / "mine.safetensors")
    recipe = recipe_from_dict(tiny_recipe_dict(model_dir, adapters=[{"path": str(lora)}]))
    before = resolve(recipe, tmp_path).identity()
    assert before["adapter_all_0_sha256"]  # by position: the same on any machine
    make_lora(model_dir / "sd", Path(lora), seed=1)  # same name, other content
    after = resolve(recipe, tmp_path).identity()
    assert after != before


# -- end to end ----------------------------------------------------------------------------


def test_a_build_with_a_lora_extends_and_a_changed_lora_is_refused(
    tmp_path: Path, model_dir: Path, adapters: dict[str, Path]
) -> None:
    """The parent's adapter table (decoded from its shards' build constants) is part of the
    identity --extend checks: the same LoRA extends, other weights under its path refuse."""
    lora = Path(shutil.copy(adapters["lora"], tmp_path / "mine.safetensors"))
    data = tiny_recipe_dict(model_dir, adapters=[{"path": str(lora)}], count_per_class=1)
    run_build(data, tmp_path / "parent", show_progress=False)
    grown = {**data, "count_per_class": 2}
    child = run_build(grown, tmp_path / "child", extend=tmp_path / "parent", show_progress=False)
    assert child.generated_now == 3 and child.manifest.counts.attempted == 6
    make_lora(model_dir / "sd", lora, seed=1)  # same path, other weights
    with pytest.raises(BuildError, match="adapter_all_0_sha256"):
        run_build(grown, tmp_path / "again", extend=tmp_path / "parent", show_progress=False)


def test_build_with_templates_and_adapters_validates_and_regenerates(
    tmp_path: Path, model_dir: Path, adapters: dict[str, Path]
) -> None:
    data = tiny_recipe_dict(
        model_dir,
        slots={"surface": ["on paper", "on slate"]},
        adapters=[{"kind": "textual_inversion", "path": str(adapters["embedding"])}],
        count_per_class=3,
    )
    data["sampling"]["guidance_jitter"] = {"low": 1.5, "high": 3.0, "levels": 2}
    data["classes"][0]["prompts"] = ["a <ink> {class} {surface}"]
    data["classes"][1].update(
        adapters=[{"path": str(adapters["lora"]), "scale": 0.8}],
        steps=3,
        guidance_scale=4.0,
        negative_prompt="smudged",
    )
    data["checks"] = {"clip_score": None}  # every class keeps a sample to regenerate
    result = run_build(data, tmp_path / "out", show_progress=False)
    out = result.output
    report = validate_dir(out)
    assert report.ok, (report.failures, report.failed_expectations())
    rows = {r["key"]: r for r in read_rows(out).to_pylist()}
    assert len(rows) == 9
    for key, row in rows.items():
        prov = find_provenance(out, key)
        for name in ("prompt", "prompt_template", "sample_steps", "sample_guidance_scale"):
            assert prov[name] == row[name]
        assert prov["prompt_slots"] == json.loads(row["prompt_slots"])
        table = prov["adapters"]
        assert table["all"][0]["token"] == "<ink>"
        assert table["classes"]["one"][0]["scale"] == 0.8
        assert (
            table["classes"]["one"][0]["sha256"]
            == check_adapter(
                AdapterSpec(path=str(adapters["lora"])),
                Path("."),
                model_dir / "sd",
                "StableDiffusionPipeline",
            ).sha256
        )
        if row["class_name"] == "zero":
            surface = prov["prompt_slots"]["surface"]  # type: ignore[index]
            assert row["prompt"] == f"a <ink> zero {surface}"
        if row["class_name"] == "one":
            assert (row["sample_steps"], row["sample_guidance_scale"]) == (3, 4.0)
            assert row["negative_prompt"] == "smudged"
        else:
            assert row["sample_steps"] == 2 and row["sample_guidance_scale"] in (1.5, 3.0)
    # the sidecar carries the same provenance
    images = _images(out)
    some = next(k for k in images if k.endswith(".json"))
    sidecar = json.loads(images[some])
    assert {"prompt_slots", "sample_steps", "sample_guidance_scale", "adapters"} <= set(sidecar)
    # one sample per class regenerates byte for byte (LoRA on, embedding, jitter)
    accepted = sorted(k for k, r in rows.items() if r["status"] == "accepted")
    regenerated = 0
    for cls in ("zero", "one", "two"):
        key = next((k for k in accepted if f"-{cls}-" in k), None)
        if key is not None:
            prov = find_provenance(out, key)
            assert regenerate(prov, Inputs.for_build(out)) == images[f"{key}.png"]
            regenerated += 1
    assert regenerated == 3, "an accepted sample of every class regenerated"


def test_balance_lora_trains_per_class_and_resume_reuses(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.pipelines.test_balance import COUNTS, make_folder

    trained: list[str] = []
    real = lora_training.train_lora

    def counting(pipe: Any, images: Any, prompts: Any, spec: Any, seed: int, *a: Any) -> Any:
        trained.append(str(a[-1]))
        return real(pipe, images, prompts, spec, seed, *a)

    monkeypatch.setattr(lora_training, "train_lora", counting)
    source = make_folder(tmp_path / "src")
    data = tiny_recipe_dict(model_dir)
    del data["count_per_class"]
    data["output"] = {"shard_size": 4}
    data["checks"] = {"clip_score": {"absolute": -1.0}}  # every sample accepted: one round
    data["balance"] = {
        "source": str(source),
        "target": "max",
        "conditioning": "lora",
        "lora": {"steps": 2, "rank": 2, "batch": 2},
    }
    out = tmp_path / "out"
    result = run_build(data, out, show_progress=False)
    short = sorted(n for n, c in COUNTS.items() if c < max(COUNTS.values()))
    assert sorted(Path(p).stem for p in trained) == short
    manifest = result.manifest
    assert manifest.adapters is not None and sorted(manifest.adapters) == short
    for name, info in manifest.adapters.items():
        path = out / info.path
        assert path.parent.name == "adapters" and path.suffix == ".safetensors"
        assert manifest.files[info.path].sha256 == info.sha256
        assert info.images == COUNTS[name] and info.rank == 2
    rows = [r for f in sorted(out.glob("0*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert rows and all(r["class_name"] in short for r in rows)
    key = sorted(r["key"] for r in rows if r["status"] == "accepted")[0]
    prov = find_provenance(out, key)
    cls = str(prov["class_name"])
    assert prov["adapters"]["classes"][cls][0]["sha256"] == manifest.adapters[cls].sha256  # type: ignore[index]
    assert regenerate(prov, Inputs.for_build(out)) == _images(out)[f"{key}.png"]
    assert validate_dir(out).ok
    # a build stopped before its manifest resumes: its adapters are reused, not trained again
    first = _images(out)
    (out / MANIFEST_NAME).unlink()
    (out / "00000_stats.json").unlink()  # and one shard unfinished: it is built again
    trained.clear()
    again = run_build(data, out, resume=True, show_progress=False)
    assert trained == []
    assert again.manifest.adapters == manifest.adapters
    assert _images(out) == first
    Manifest.model_validate_json((out / MANIFEST_NAME).read_bytes())


def test_trained_loras_are_reused_only_when_their_hashes_match(
    tmp_path: Path, model_dir: Path
) -> None:
    from synthgen.schemas.recipe import LoraTrainSpec
    from tests.pipelines.test_balance import _png

    sd = model_dir / "sd"
    loaded: list[int] = []

    def load() -> Any:
        loaded.append(1)
        return model_folder.load_pipeline(sd, "native", "float32", "cpu", 1)

    spec = LoraTrainSpec(steps=2, rank=2, batch=2)
    images = {"one": [_png(1), _png(2)], "two": [_png(3)]}
    prompts = {"one": ["a digit 1"], "two": ["a digit 2"]}
    args = (images, prompts, spec, 7, "recipehash", "modelhash", 32, 32)
    first = lora_training.class_loras(tmp_path, load, *args)
    assert sorted(first) == ["one", "two"] and loaded == [1]
    assert all(t.path.parent == tmp_path / "adapters" for t in first.values())
    again = lora_training.class_loras(tmp_path, load, *args)
    assert again == first and loaded == [1]  # nothing trained, the model not even loaded
    victim = first["two"].path
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")  # a damaged file is trained again
    redone = lora_training.class_loras(tmp_path, load, *args)
    assert loaded == [1, 1]
    assert redone["two"].sha256 == first["two"].sha256  # seeded: the same bytes
    other = lora_training.class_loras(
        tmp_path, load, images, prompts, spec.model_copy(update={"rank": 3}), *args[3:]
    )
    assert other["one"].sha256 != first["one"].sha256  # other settings: trained anew
