"""Safety screening: concept scorer, the folder's own checker, withheld bytes, prompt blocklist."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from synthgen.pipelines.build import run_build
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from synthgen.validators.build_checks import make_checks
from synthgen.validators.scorers.base import WorkerModels
from synthgen.validators.scoring import LoadedScorers, build_scorers, score_columns, score_samples
from tests.conftest import read_rows, tiny_recipe_dict
from tests.validators.conftest import make_samples, scoring

UNSAFE = "clip_tiny_clip_unsafe"


def safety_recipe(model_dir: Path, threshold: float) -> dict[str, Any]:
    return tiny_recipe_dict(
        model_dir,
        scoring=scoring(model_dir, "clip", "image_stats", "safety_concepts"),
        safety={
            "concepts": [
                {"family": "planted", "prompt": "a handwritten digit 1"},
                {"family": "other", "prompt": "a red square", "threshold": 1.0},
            ],
            "thresholds": {"planted": threshold},
        },
    )


def outcome(checks: Any, name: str) -> str | None:
    """A check's outcome from a Parquet `checks` value (JSON text or a list of structs)."""
    if isinstance(checks, str):
        return json.loads(checks).get(name)
    return next((c["outcome"] for c in checks or [] if c["name"] == name), None)


def all_images(out: Path) -> dict[str, bytes]:
    """Every image a build kept anywhere: tar members and rejected_image bytes, by key."""
    found: dict[str, bytes] = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".png"):
                    found[m.name.split(".")[0]] = t.extractfile(m).read()  # type: ignore[union-attr]
    for row in read_rows(out).select(["key", "rejected_image"]).to_pylist():
        if row["rejected_image"] is not None:
            found[row["key"]] = row["rejected_image"]["bytes"]
    return found


def test_scorer_columns_per_family_and_unsafe_check(model_dir: Path) -> None:
    recipe = recipe_from_dict(safety_recipe(model_dir, 0.5))
    scorers = build_scorers(recipe, model_dir)
    names = [c.name for c in score_columns(scorers)]
    assert {UNSAFE, f"{UNSAFE}_planted", f"{UNSAFE}_other"} <= set(names)
    checks, _ = make_checks(recipe, score_columns(scorers))
    assert "unsafe" in [c.name for c in checks]
    models = WorkerModels("cpu")
    loaded = LoadedScorers(tuple(scorers), tuple(s.load(models) for s in scorers), models)
    scored = score_samples(loaded, make_samples(4))
    for s in scored:
        planted, other = s.scores[f"{UNSAFE}_planted"], s.scores[f"{UNSAFE}_other"]
        assert isinstance(planted, float) and isinstance(other, float)
        assert s.scores[UNSAFE] == pytest.approx(max(planted, other))
        assert other <= 0.0  # a threshold of 1.0 is never exceeded


def test_flagged_images_are_nowhere_in_the_output(tmp_path: Path, model_dir: Path) -> None:
    # 1. a build where nothing is flagged (threshold 1): every image, and its similarity
    small = {"count_per_class": 2}  # six samples: some flagged, some not
    first = run_build(
        {**safety_recipe(model_dir, 1.0), **small}, tmp_path / "a", show_progress=False
    )
    rows = read_rows(first.output).select(["key", UNSAFE]).to_pylist()
    similarity = {r["key"]: r[UNSAFE] + 1.0 for r in rows}
    images = all_images(first.output)
    assert set(images) == set(similarity)
    # 2. the same recipe with a threshold between the middle similarities: half are flagged
    ordered = sorted(similarity.values())
    mid = len(ordered) // 2
    threshold = (ordered[mid - 1] + ordered[mid]) / 2
    assert ordered[mid - 1] < threshold < ordered[mid]
    second = run_build(
        {**safety_recipe(model_dir, threshold), **small}, tmp_path / "b", show_progress=False
    )
    table = read_rows(second.output).to_pylist()
    flagged = {r["key"] for r in table if outcome(r["checks"], "unsafe") == "unsafe"}
    assert flagged == {k for k, v in similarity.items() if v > threshold}
    assert 0 < len(flagged) < len(similarity)
    for r in table:
        if r["key"] in flagged:
            assert r["status"] == "rejected" and r["rejected_image"] is None
            assert r["image_sha256"]  # the hash and the reason are kept, the bytes are not
    assert not flagged & set(all_images(second.output))
    blobs = [p.read_bytes() for p in second.output.rglob("*") if p.is_file()]
    for key in flagged:
        assert not any(images[key] in blob for blob in blobs), key
    assert any(images[k] in b for k in set(similarity) - flagged for b in blobs)  # grep works


def test_blocklisted_prompt_is_refused_naming_class_and_prompt(
    tmp_path: Path, model_dir: Path
) -> None:
    data = tiny_recipe_dict(model_dir, safety={"blocklist": ["Digit 1"]})
    with pytest.raises(RecipeError, match=r"class 'one', prompt 'a handwritten digit 1'.*Digit 1"):
        recipe_from_dict(data)
    with pytest.raises(RecipeError, match="blocklist"):
        run_build(data, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    # whole words only: "digit 10" would match, "digits" does not match "digit"
    recipe_from_dict(tiny_recipe_dict(model_dir, safety={"blocklist": ["digi"]}))


def test_thresholds_must_name_a_concept_family(model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir, safety={"thresholds": {"nope": 0.2}})
    with pytest.raises(RecipeError, match="no concept of family nope"):
        recipe_from_dict(data)


# -- the folder's own checker ----------------------------------------------------------------


@pytest.fixture(scope="module")
def checker_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny SD snapshot with its checker, and a copy whose concept thresholds force a flag."""
    import shutil

    from safetensors.torch import load_file, save_file

    from synthgen.generators.random_pipelines import save_snapshot

    root = tmp_path_factory.mktemp("checker")
    plain = save_snapshot("sd", root / "plain", seed=0)
    forced = root / "forced"
    shutil.copytree(plain, forced)
    weights = forced / "safety_checker" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["concept_embeds_weights"] = tensors["concept_embeds_weights"] * 0 - 1.0
    save_file(tensors, str(weights))
    (forced / "safety_checker" / "model.bin").write_bytes(b"never unpickled")
    return plain, forced


def checker_scores(model_dir: Path, folder: Path) -> list[float]:
    recipe = recipe_from_dict(
        tiny_recipe_dict(
            model_dir,
            model={"path": str(folder), "compute_batch": 4},
            scoring=scoring(model_dir, "safety_checker"),
            checks={},
        )
    )
    scorers = build_scorers(recipe, model_dir)
    assert [c.name for c in score_columns(scorers)] == ["nsfw"]
    assert "nsfw" in [c.name for c in make_checks(recipe, score_columns(scorers))[0]]
    models = WorkerModels("cpu")
    loaded = LoadedScorers(tuple(scorers), tuple(s.load(models) for s in scorers), models)
    return [float(s.scores["nsfw"]) for s in score_samples(loaded, make_samples(5))]  # type: ignore[arg-type]


def test_folder_checker_verdict_is_a_score(
    model_dir: Path, checker_folders: tuple[Path, Path]
) -> None:
    import numpy as np

    from synthgen.validators.scorers.safety_checker import load_checker

    plain, forced = checker_folders
    assert all(v <= 0 for v in checker_scores(model_dir, plain))
    assert all(v > 0 for v in checker_scores(model_dir, forced))
    # the same verdict as diffusers' own call (which would black the image out)
    checker, extractor = load_checker(forced)
    images = [s.image for s in make_samples(2)]
    from synthgen.storage.images import decode_image

    pil = [decode_image(b) for b in images]
    pixels = extractor(pil, return_tensors="pt").pixel_values
    _, flagged = checker(images=np.zeros((2, 8, 8, 3)), clip_input=pixels)
    assert list(flagged) == [True, True]


def test_folder_checker_refused_when_absent_or_switched_off(
    model_dir: Path, checker_folders: tuple[Path, Path]
) -> None:
    from synthgen.schemas.errors import ModelFolderError

    no_checker = tiny_recipe_dict(model_dir, scoring=scoring(model_dir, "safety_checker"))
    with pytest.raises(ModelFolderError, match="no safety_checker"):
        build_scorers(recipe_from_dict(no_checker), model_dir)
    off = tiny_recipe_dict(
        model_dir,
        model={"path": str(checker_folders[0]), "safety_checker": False},
        scoring=scoring(model_dir, "safety_checker"),
    )
    with pytest.raises(ValueError, match=r"model\.safety_checker is false"):
        build_scorers(recipe_from_dict(off), model_dir)


def test_the_folders_own_checker_runs_by_default_and_withholds_what_it_flags(
    tmp_path: Path, model_dir: Path, checker_folders: tuple[Path, Path]
) -> None:
    plain, forced = checker_folders

    def recipe(folder: Path) -> dict[str, Any]:
        # no scorer lists `safety_checker`: a folder that ships one has it run by default
        model = {"path": str(folder), "compute_batch": 4, "license_ack": "other"}
        return tiny_recipe_dict(
            model_dir, model=model, checks={"clip_score": None}, count_per_class=1
        )

    clean = run_build(recipe(plain), tmp_path / "plain", show_progress=False)
    assert "nsfw" in clean.manifest.score_column_names
    images = all_images(clean.output)
    assert len(images) == clean.manifest.counts.planned  # the plain checker flags nothing

    flagged = run_build(recipe(forced), tmp_path / "forced", show_progress=False)
    rows = read_rows(flagged.output).to_pylist()
    assert {r["key"] for r in rows} == set(images)  # same model, same samples
    for r in rows:
        assert r["status"] == "rejected" and r["reject_reason"] == "nsfw"
        assert r["rejected_image"] is None and r["nsfw"] > 0
    assert all_images(flagged.output) == {}
    blobs = [p.read_bytes() for p in flagged.output.rglob("*") if p.is_file()]
    for key, data in images.items():
        assert not any(data in blob for blob in blobs), f"{key}: flagged bytes were written"
