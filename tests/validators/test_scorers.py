"""Scorer plug-ins: discovery, checking before loading, shared models, fixed-shape scores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.images import decode_image
from synthgen.validators import clip_folder
from synthgen.validators.clip_model import clip_similarity
from synthgen.validators.scorers import base
from synthgen.validators.scorers.base import ScoreBatch, Scorer, ScorerIdentity
from synthgen.validators.scorers.image_stats import image_stats
from synthgen.validators.scoring import (
    ScoreSamples,
    build_scorers,
    phash,
    score_columns,
    score_samples,
    scorer_provenance,
)
from tests.validators.conftest import make_samples, png, recipe_with, scoring

ALL = ("clip", "clip_embedding", "image_stats")


def test_every_module_in_the_package_is_a_registered_scorer() -> None:
    """In a fresh interpreter (nothing imported yet), `scorer_classes` finds every module."""
    import pkgutil
    import subprocess
    import sys

    import synthgen.validators.scorers as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base"}
    code = (
        "from synthgen.validators.scorers.base import scorer_classes; "
        "print(' '.join(sorted(scorer_classes())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == modules
    assert set(ALL) <= modules


def test_a_new_scorer_needs_only_its_own_class(model_dir: Path) -> None:
    """Subclassing registers; the recipe can list it and its columns flow everywhere."""

    class Constant(Scorer):
        name = "test_constant"

        @classmethod
        def from_recipe(cls, recipe: Any, base_dir: Path, options: Any) -> Scorer:
            return cls()

        def columns(self) -> list[ScoreColumn]:
            return [ScoreColumn(name="constant", scorer=self.name, minimum=0, maximum=1)]

        def identity(self) -> ScorerIdentity:
            return ScorerIdentity(self.name, 1, None, None, None)

        def score(self, batch: ScoreBatch, state: Any) -> list[dict[str, Any]]:
            return [{"constant": 0.5} for _ in batch.samples]

    try:
        recipe = recipe_with(model_dir, scoring=scoring(model_dir, "image_stats", "test_constant"))
        scorers = build_scorers(recipe, model_dir)
        assert [c.name for c in score_columns(scorers)] == [
            "brightness",
            "sharpness",
            "entropy",
            "constant",
        ]
        loaded = ScoreSamples(scorers, "cpu").load_model()
        (scored,) = score_samples(loaded, make_samples(1))
        assert scored.scores["constant"] == 0.5
    finally:
        base.SCORERS.remove("test_constant")


def test_default_scorers_declare_todays_columns_and_checks(model_dir: Path) -> None:
    scorers = build_scorers(recipe_with(model_dir), model_dir)
    assert [s.name for s in scorers] == ["clip", "image_stats"]
    columns = {c.name: c for c in score_columns(scorers)}
    assert list(columns) == [
        "clip_tiny_clip_score",
        "clip_tiny_clip_label_margin",
        "brightness",
        "sharpness",
        "entropy",
    ]
    assert columns["clip_tiny_clip_score"].checks == {"clip_score": "above"}
    assert columns["clip_tiny_clip_label_margin"].checks == {"label_margin": "above"}
    assert columns["brightness"].checks == {"dark": "above", "light": "below"}
    assert columns["sharpness"].checks == {"blurry": "above"}
    assert columns["entropy"].checks == {"low_information": "above"}
    assert (columns["clip_tiny_clip_score"].minimum, columns["brightness"].maximum) == (-1, 1)
    prov = scorer_provenance(scorers)
    assert prov[0]["model"] == "tiny-clip" and len(prov[0]["sha256"]) == 64
    assert prov[0]["columns"] == ["clip_tiny_clip_score", "clip_tiny_clip_label_margin"]
    assert prov[1] == {
        "name": "image_stats",
        "version": 1,
        "model": None,
        "sha256": None,
        "library": "numpy",
        "columns": ["brightness", "sharpness", "entropy"],
    }


def test_embedding_column_is_a_vector_of_the_models_width(model_dir: Path) -> None:
    recipe = recipe_with(model_dir, scoring=scoring(model_dir, "clip_embedding"))
    (column,) = score_columns(build_scorers(recipe, model_dir))
    assert column.name == "clip_tiny_clip_embedding" and column.dim == 16 and column.is_vector


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded while checking the recipe")

    monkeypatch.setattr(clip_folder, "load_clip", refuse)


def test_bad_inputs_fail_naming_the_scorer_before_any_load(
    model_dir: Path, tmp_path: Path, no_loading: None
) -> None:
    with pytest.raises(ValueError, match=r"scorer 'nope': unknown scorer; known: .*clip"):
        build_scorers(recipe_with(model_dir, scoring=scoring(model_dir, "nope")), model_dir)
    bad_options = scoring(model_dir, "clip")
    bad_options["scorers"][0]["options"] = {"threshold": 3}
    with pytest.raises(ValueError, match="scorer 'clip': invalid options: threshold: unknown"):
        build_scorers(recipe_with(model_dir, scoring=bad_options), model_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = scoring(model_dir, "image_stats", "clip_embedding")
    missing["clip_model"] = "empty"  # relative: resolved against base_dir
    with pytest.raises(ModelFolderError, match=r"scorer 'clip_embedding': .*empty.*config"):
        build_scorers(recipe_with(model_dir, scoring=missing), tmp_path)


def test_two_scorers_writing_one_column_is_an_error(model_dir: Path) -> None:
    scorers = build_scorers(recipe_with(model_dir), model_dir)
    with pytest.raises(ValueError, match="'brightness' is written by both"):
        score_columns([*scorers, scorers[1]])


def _count_calls(monkeypatch: pytest.MonkeyPatch, obj: Any, method: str) -> list[int]:
    calls: list[int] = []
    original = getattr(obj, method)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, method, counted)
    return calls


def test_shared_clip_loads_once_and_embeds_each_batch_once(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _count_calls(monkeypatch, clip_folder, "load_clip")
    recipe = recipe_with(model_dir, scoring=scoring(model_dir, *ALL, batch_size=4))
    loaded = ScoreSamples(build_scorers(recipe, model_dir), "cpu").load_model()
    assert len(loads) == 1, "clip and clip_embedding share one model per worker"
    (bundle,) = loaded.models._models.values()
    passes = _count_calls(monkeypatch, bundle.model, "encode_image")
    samples = make_samples(6)
    scored = score_samples(loaded, samples)
    # 6 images in fixed chunks of 4: two image passes for both scorers together
    assert len(passes) == 2
    assert len(loads) == 1
    for before, after in zip(samples, scored, strict=True):
        assert before.scores == {} and before.phash == "", "inputs are never changed"
        assert after.request == before.request and after.image == before.image
        assert set(after.scores) == {
            "clip_tiny_clip_score",
            "clip_tiny_clip_label_margin",
            "clip_tiny_clip_embedding",
            "brightness",
            "sharpness",
            "entropy",
        }
        emb = np.asarray(after.scores["clip_tiny_clip_embedding"])
        assert emb.shape == (16,) and abs(np.linalg.norm(emb) - 1) < 1e-5
        assert len(after.phash) == 16
    images = [decode_image(s.image) for s in samples]
    expected = clip_similarity(bundle, images, [s.request.prompt for s in samples], 4)
    assert [s.scores["clip_tiny_clip_score"] for s in scored] == expected


def _scores(samples: list[Sample]) -> list[dict[str, Any]]:
    return [s.scores for s in samples]


def test_scores_do_not_depend_on_how_samples_were_batched(model_dir: Path) -> None:
    recipe = recipe_with(model_dir, scoring=scoring(model_dir, *ALL, batch_size=4))
    loaded = ScoreSamples(build_scorers(recipe, model_dir), "cpu").load_model()
    samples = make_samples(7, seed=3)
    whole = score_samples(loaded, samples)
    split = score_samples(loaded, samples[:2]) + score_samples(loaded, samples[2:])
    assert _scores(whole) == _scores(split)
    margins = [s.scores["clip_tiny_clip_label_margin"] for s in whole]
    assert all(-2 <= m <= 2 and not math.isnan(m) for m in margins)


def test_label_margin_is_nan_with_a_single_class(model_dir: Path) -> None:
    one = [{"id": 0, "name": "zero", "prompts": ["a handwritten digit 0"]}]
    recipe = recipe_with(model_dir, classes=one, scoring=scoring(model_dir, "clip"))
    loaded = ScoreSamples(build_scorers(recipe, model_dir), "cpu").load_model()
    samples = [s for s in make_samples(3) if s.request.class_label == 0]
    (scored,) = score_samples(loaded, samples)
    assert math.isnan(scored.scores["clip_tiny_clip_label_margin"])


def test_image_stats_tell_dark_light_flat_and_sharp_apart() -> None:
    rng = np.random.default_rng(0)

    def stats(pixels: np.ndarray) -> dict[str, float]:
        return image_stats(decode_image(png(pixels)))

    black = stats(np.zeros((32, 32, 3)))
    white = stats(np.full((32, 32, 3), 255))
    noise = stats(rng.integers(0, 256, (32, 32, 3)))
    smooth = np.tile(np.linspace(0, 255, 32), (32, 1))[..., None].repeat(3, axis=2)
    gradient = stats(smooth)
    assert black["brightness"] == 0 and white["brightness"] == 1
    assert black["entropy"] == 0 and 7 < noise["entropy"] <= 8
    assert noise["sharpness"] > 100 * gradient["sharpness"]


def test_phash_is_stable_and_close_for_near_copies() -> None:
    from synthgen.validators.dedup import hamming

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3))
    a = phash(decode_image(png(img)))
    tweaked = img.copy()
    tweaked[0, 0] = 255 - tweaked[0, 0]
    b = phash(decode_image(png(tweaked)))
    c = phash(decode_image(png(rng.integers(0, 256, (32, 32, 3)))))
    assert len(a) == 16 and a == phash(decode_image(png(img)))
    assert hamming(a, b) <= 4 < hamming(a, c)


def test_a_scorer_returning_other_columns_fails_loudly(model_dir: Path) -> None:
    scorers = build_scorers(
        recipe_with(model_dir, scoring=scoring(model_dir, "image_stats")), model_dir
    )
    loaded = ScoreSamples(scorers, "cpu").load_model()
    broken = type(scorers[0])
    original = broken.score
    try:
        broken.score = lambda self, batch, state: [{"brightness": 0.0} for _ in batch.samples]  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="scorer 'image_stats' returned"):
            score_samples(loaded, make_samples(2))
    finally:
        broken.score = original  # type: ignore[method-assign]


def test_padded_chunks_have_one_shape() -> None:
    from synthgen.schemas.batches import padded_chunks

    assert list(padded_chunks([1, 2, 3, 4, 5], 2)) == [([1, 2], 2), ([3, 4], 2), ([5, 5], 1)]
    assert list(padded_chunks([], 3)) == []
    with pytest.raises(ValueError):
        list(padded_chunks([1], 0))
