"""The recipe hash is pinned: a build names its recipe by it, and a resume or an extension
finds the build by it. Every shipped recipe and one variant per optional block keep the hash
they had when they were first written."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from synthgen.schemas.recipe import Recipe, load_recipe, read_recipe_dict, recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
LEGACY = ROOT / "tests" / "data" / "legacy_manifest"

PINNED_RECIPES = {
    "digits-balance-img2img.yaml": (
        "0dd26114b2d7b34e72b87f1574dfdc14af2d18d632edee74b62837badc25b556"
    ),
    "digits-balance-feedback.yaml": (
        "413ee6a061e75c1ac7cafd8f4cad9a5256afab168fab4c0a83c46bef01bcca80"
    ),
    "digits-balance-lora.yaml": "c5a17f6e1ebc2b3b366dcc97b94e508afd109022064b68953373804ef72f1022",
    "digits-balance.yaml": "079139cd289913426a51adf3e729c72549f904655a8a8fe43fee29a52c8cd660",
    "moving-digits.yaml": "4ac8a352a59bb36b14f30b6bf9a76b4b452a3c08535f0adf7b51fb8b4e5e1589",
    "digits.yaml": "105a7d9d29454247b861e1b63900f907ed6fd37e67e4b26aa7dc0c90cec202b7",
}


def _digits() -> dict[str, Any]:
    return copy.deepcopy(read_recipe_dict(RECIPES / "digits.yaml"))


def _with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = _digits()
    change(data)
    return data


def _balance(d: dict[str, Any]) -> None:
    d["balance"] = {
        "source": "data/digits-imbalanced.parquet",
        "format": "parquet",
        "label_type": "id",
        "target": {"three": 20, "five": 30},
        "conditioning": {"text": 1, "img2img": 3},
        "strength": 0.5,
        "adapt": "lora",
        "lora": {"steps": 3, "rank": 2},
    }


def _reference(d: dict[str, Any]) -> None:
    d["reference"] = {
        "source": "data/other.parquet",
        "format": "parquet",
        "label_type": "name",
        "label_column": "cls",
        "image_column": "png",
        "max_images": 500,
    }


def _eval_set(d: dict[str, Any]) -> None:
    d["eval_set"] = {"source": "data/eval", "format": "folder"}
    d["checks"]["contaminated"] = {"min_similarity": 0.97, "max_phash_distance": 4}


def _img2img(d: dict[str, Any]) -> None:
    d["conditioning"] = {
        "mode": "img2img",
        "source": {"path": "data/digits-train.parquet", "label_type": "id"},
        "strength": 0.4,
        "resize": "pad",
    }


def _inpaint(d: dict[str, Any]) -> None:
    d["conditioning"] = {
        "mode": "inpaint",
        "source": {"path": "data/masked.parquet", "mask_column": "mask"},
    }


def _ip_adapter(d: dict[str, Any]) -> None:
    d["conditioning"] = {
        "mode": "ip_adapter",
        "source": {"path": "data/digits-train.parquet"},
        "ip_adapter": {"path": "../models/ip", "scale": 0.6, "image": "data/one.png"},
        "per_class": {"three": {"ip_adapter": {"scale": 0.3}}},
    }


def _controlnet(d: dict[str, Any]) -> None:
    d["conditioning"] = {
        "mode": "controlnet",
        "source": {"path": "data/edges", "format": "folder", "mask_folder": None},
        "controlnets": [
            {"path": "../models/cn", "preprocessor": {"name": "canny", "low_threshold": 50}},
            {"path": "../models/cn2", "image": "data/pose.png", "conditioning_scale": 0.5},
        ],
    }


def _per_class(d: dict[str, Any]) -> None:
    d["classes"][3].update(
        slots={"style": ["bold", "thin"]},
        prompts=["a {style} handwritten three"],
        negative_prompt="blurry",
        guidance_scale=2.0,
        steps=12,
        adapters=[{"path": "adapters/three.safetensors", "scale": 0.7}],
    )


def _slots_and_adapters(d: dict[str, Any]) -> None:
    d["slots"] = {"ink": ["black", "blue"]}
    d["classes"][0]["prompts"] = ["a {ink} handwritten zero"]
    d["adapters"] = [
        {"path": "adapters/style.safetensors", "scale": 0.5},
        {"kind": "textual_inversion", "path": "adapters/tok.safetensors", "token": "<s>"},
    ]


def _c2pa(d: dict[str, Any]) -> None:
    d["output"]["c2pa"] = {"cert_chain": "keys/chain.pem", "key_env": "SIGNING_KEY"}


def _metrics(d: dict[str, Any]) -> None:
    d["validation"]["metrics"] = {"kid": {"max": 0.1, "per_class": False}, "recall": {"min": 0.2}}
    d["validation"]["max_failed_fraction"] = 0.01


def _near_copy(d: dict[str, Any]) -> None:
    d["checks"]["near_copy"] = {"min_similarity": 0.9}
    d["checks"]["semantic_duplicate"] = {"min_similarity": 0.99}
    d["checks"]["scores"] = {"clip_score": {"quantile": 0.1, "keep": "above"}}


def _guidance_jitter(d: dict[str, Any]) -> None:
    d["sampling"]["guidance_jitter"] = {"low": 1.0, "high": 4.0, "levels": 4}


def _defaults_spelled_out(d: dict[str, Any]) -> None:
    """Optional fields given at their default hash as if left out."""
    d["sampling"]["guidance_jitter"] = None
    d["validation"]["max_failed_fraction"] = 0.001
    d["validation"]["metrics"] = {"precision": {"min": 0.3}}
    d["checks"].update(contaminated=None, semantic_duplicate=None)
    d["output"]["c2pa"] = None
    d.update(eval_set=None, conditioning=None, slots={}, adapters=[])
    d["classes"][0].update(slots={}, negative_prompt=None, steps=None, adapters=[])


def _balance_minimal(d: dict[str, Any]) -> None:
    d["balance"] = {"source": "data/digits-imbalanced.parquet"}


def _balance_defaults_spelled_out(d: dict[str, Any]) -> None:
    d["balance"] = {
        "source": "data/digits-imbalanced.parquet",
        "conditioning": "text",
        "adapt": "none",
        "lora": None,
        "strength": None,
    }


VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "balance": _balance,
    "reference": _reference,
    "eval_set": _eval_set,
    "conditioning_img2img": _img2img,
    "conditioning_inpaint": _inpaint,
    "conditioning_ip_adapter": _ip_adapter,
    "conditioning_controlnet": _controlnet,
    "per_class": _per_class,
    "slots_and_adapters": _slots_and_adapters,
    "output_c2pa": _c2pa,
    "validation_metrics": _metrics,
    "checks_near_copy": _near_copy,
    "sampling_guidance_jitter": _guidance_jitter,
    "defaults_spelled_out": _defaults_spelled_out,
    "balance_minimal": _balance_minimal,
    "balance_defaults_spelled_out": _balance_defaults_spelled_out,
}

PINNED_VARIANTS = {
    "balance": "a634f555d9a96fc7f0075f1df423ad4b016a1bf4bb36a20c445ac5263f2d6c12",
    "reference": "8860a307eecc5530f4621cd72bc584d5b1d6cf325c9120e993206fcf684f8b2d",
    "eval_set": "ab416b72b4489e96a56853ba8f3db77916cea3b14636d05af70b63d6490b55f3",
    "conditioning_img2img": "8179da43beebba5de08b10c4b938d647724937a8c95ed489c21ede0ca94c796a",
    "conditioning_inpaint": "15d4d8515b8fb7de031e606af58f8a6e822db686539a89b91335e9c7749d8884",
    "conditioning_ip_adapter": "25bb894536e9ef2ae7f0291c35655393c80441adcfc5ad2a20381ec0cb8ff570",
    "conditioning_controlnet": "5475314ead85395e289890f0a6b46bca64a7732d5d92e66aa69b68d6c6c759e6",
    "per_class": "d572bbb584f128d977ab2bbe8a35b3f21b1199b2330d12fa86750ab115df3911",
    "slots_and_adapters": "89d3050aa7f25f6b166420182e2a0541e809e109d88bd796bfba4fad3a4b1888",
    "output_c2pa": "41d20786b239f6dadc9be630b77630c34548e57577cbff3981e71eb1d8a5f72a",
    "validation_metrics": "b26d99e66c536d804d114164e62385f350a083e458ff2baa1a382d7dec20497f",
    "checks_near_copy": "0e36d25acad65510c7b3440171afdfae584489d3ec2e23f315c2c492aa59ad01",
    "sampling_guidance_jitter": "0b420acda2f6ecaaf29294bfee89185723a0c8ac55ee783da63b5491a34b9db3",
    "defaults_spelled_out": "105a7d9d29454247b861e1b63900f907ed6fd37e67e4b26aa7dc0c90cec202b7",
    "balance_minimal": "e4aa14e59929505e0c1855c08ecaaec6a1589b1962aa83dca45f5d511b9acaeb",
    "balance_defaults_spelled_out": (
        "e4aa14e59929505e0c1855c08ecaaec6a1589b1962aa83dca45f5d511b9acaeb"
    ),
}


def test_every_shipped_recipe_is_pinned() -> None:
    found = sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml"))
    assert found == sorted(PINNED_RECIPES), "pin the hash of a new recipe here"


@pytest.mark.parametrize("name", sorted(PINNED_RECIPES))
def test_shipped_recipe_hash_is_unchanged(name: str) -> None:
    recipe, _ = load_recipe(RECIPES / name)
    assert recipe.hash == PINNED_RECIPES[name], f"the hash of recipes/{name} changed"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_hash_is_unchanged(name: str) -> None:
    recipe = recipe_from_dict(_with(VARIANTS[name]), f"<{name}>")
    assert recipe.hash == PINNED_VARIANTS[name], f"the hash of the {name} variant changed"


def test_variants_differ_from_the_recipe_they_change() -> None:
    base = load_recipe(RECIPES / "digits.yaml")[0].hash
    same = {"defaults_spelled_out"}
    for name in VARIANTS:
        assert (PINNED_VARIANTS[name] == base) == (name in same), name
    assert PINNED_VARIANTS["balance_defaults_spelled_out"] == PINNED_VARIANTS["balance_minimal"]
    assert len(set(PINNED_VARIANTS.values())) == len(PINNED_VARIANTS) - 1


def test_a_build_written_before_still_resumes() -> None:
    """The manifest of a build made before the recipe package: its stored recipe copy,
    read by today's Recipe, has the hash the build is named by."""
    manifest = json.loads((LEGACY / "manifest.json").read_text())
    stored = json.loads((LEGACY / "recipe.json").read_text())
    assert stored == manifest["recipe"]
    assert Recipe.model_validate(stored).hash == manifest["recipe_hash"]
    again = Recipe.model_validate(stored).model_dump(mode="json")  # as a resume rewrites it
    assert Recipe.model_validate(again).hash == manifest["recipe_hash"]
