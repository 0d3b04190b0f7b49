"""The model folder's own safety checker (Stable Diffusion's `StableDiffusionSafetyChecker`).

diffusers runs the checker inside the pipeline and blacks out what it flags; synthgen loads
the pipeline without it and runs the checker here, on the decoded image, so the verdict (a
score) is recorded and the image is withheld instead of replaced by a black square.
Loading is local and safetensors-only: a temporary folder of links to the checker's
`config.json` and `model.safetensors` (never a pickle beside them) and the feature
extractor's `preprocessor_config.json`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.batches import padded_chunks
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import Recipe, resolve_path
from synthgen.schemas.records import Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.hashing import file_sha256
from synthgen.storage.model_files import safetensors_header
from synthgen.validators.scorers.base import (
    ScoreBatch,
    Scorer,
    ScorerIdentity,
    WorkerModels,
    max_score,
)

CHECKER_CLASS = ["stable_diffusion", "StableDiffusionSafetyChecker"]
CHECKER_FILES = ("config.json", "model.safetensors")
EXTRACTOR_FILE = "preprocessor_config.json"


def folder_checker(model_path: Path) -> Path | None:
    """The folder's checker weights when its model_index.json lists a checker, else None.

    Raises ModelFolderError for a checker of another class or with missing/corrupt files.
    """
    try:
        index = json.loads((model_path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{model_path}/model_index.json: unreadable: {exc}") from None
    spec = index.get("safety_checker") if isinstance(index, dict) else None
    if not isinstance(spec, list) or spec[:1] == [None]:
        return None
    if list(spec) != CHECKER_CLASS:
        raise ModelFolderError(
            f"{model_path}/model_index.json: safety_checker {spec!r} is not "
            f"{CHECKER_CLASS[1]}; set model.safety_checker: false to build without it"
        )
    for name in CHECKER_FILES:
        if not (model_path / "safety_checker" / name).is_file():
            raise ModelFolderError(f"{model_path}/safety_checker/{name}: missing")
    if not (model_path / "feature_extractor" / EXTRACTOR_FILE).is_file():
        raise ModelFolderError(f"{model_path}/feature_extractor/{EXTRACTOR_FILE}: missing")
    weights = model_path / "safety_checker" / "model.safetensors"
    safetensors_header(weights)  # a corrupt file fails here, before anything loads
    return weights


@contextlib.contextmanager
def _view(model_path: Path) -> Iterator[Path]:
    """Links to only the files the loaders may read."""
    with tempfile.TemporaryDirectory(prefix="synthgen-checker-") as tmp:
        root = Path(tmp)
        (root / "safety_checker").mkdir()
        (root / "feature_extractor").mkdir()
        for name in CHECKER_FILES:
            (root / "safety_checker" / name).symlink_to(
                (model_path / "safety_checker" / name).resolve()
            )
        (root / "feature_extractor" / EXTRACTOR_FILE).symlink_to(
            (model_path / "feature_extractor" / EXTRACTOR_FILE).resolve()
        )
        yield root


def load_checker(model_path: Path, device: str = "cpu") -> tuple[Any, Any]:
    """(StableDiffusionSafetyChecker, CLIPImageProcessor): local safetensors only."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    with _view(model_path) as view:
        loader: Any = StableDiffusionSafetyChecker  # typed stubs expect a model, not a path
        checker = loader.from_pretrained(
            str(view / "safety_checker"),
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
        )
        extractor = CLIPImageProcessor.from_pretrained(
            str(view / "feature_extractor"), local_files_only=True
        )
    if device.startswith("cuda"):
        checker = checker.half()  # scoring on the GPU in half precision
    return checker.to(device).eval(), extractor


def concept_scores(checker: Any, pixel_values: Any) -> Any:
    """Per image, the largest concept score of diffusers' checker (> 0: flagged).

    The same arithmetic as `StableDiffusionSafetyChecker.forward`, kept as a number: cosine
    distance to each concept embedding minus its threshold, raised by 0.01 when a
    "special care" concept matched.
    """
    import torch
    from torch.nn.functional import normalize

    with torch.inference_mode():
        pooled = checker.vision_model(pixel_values)[1]
        embeds = normalize(checker.visual_projection(pooled), dim=-1)
        special = embeds @ normalize(checker.special_care_embeds, dim=-1).T
        concepts = embeds @ normalize(checker.concept_embeds, dim=-1).T
        special_care = torch.any(special - checker.special_care_embeds_weights > 0, dim=1)
        scores = concepts - checker.concept_embeds_weights + special_care[:, None] * 0.01
        return scores.max(dim=1).values.float().cpu()


@dataclass(frozen=True)
class _Loaded:
    checker: Any
    extractor: Any


class SafetyChecker(Scorer):
    """`nsfw`: the folder's own checker's largest concept score, in [-3, 3], backing the
    `nsfw` check (rejects above 0, the checker's own verdict); a rejected image is withheld.

    Listed in `scoring.scorers`; refused when the folder has no checker or the recipe turned
    it off (`model.safety_checker: false`). A clip scores its most flagged sampled frame.
    """

    name = "safety_checker"

    def __init__(self, model_path: str, sha256: str, compute_batch: int):
        self.model_path = model_path
        self.sha256 = sha256
        self.compute_batch = compute_batch

    @classmethod
    def from_recipe(cls, recipe: Recipe, base_dir: Path, options: Any) -> SafetyChecker:
        if not recipe.model.safety_checker:
            raise ValueError("model.safety_checker is false: remove safety_checker from scorers")
        path = resolve_path(base_dir, recipe.model.path)
        weights = folder_checker(path)
        if weights is None:
            raise ModelFolderError(f"{path}: the model folder has no safety_checker")
        return cls(str(path), file_sha256(weights), recipe.scoring_batch)

    def columns(self) -> list[ScoreColumn]:
        return [
            ScoreColumn(
                name="nsfw",
                scorer=self.name,
                minimum=-3.0,
                maximum=3.0,
                checks={"nsfw": "below"},
                description="the folder's safety checker: largest concept score (> 0: flagged)",
            )
        ]

    def identity(self) -> ScorerIdentity:
        return ScorerIdentity(self.name, self.version, CHECKER_CLASS[1], self.sha256, "diffusers")

    def load(self, models: WorkerModels) -> _Loaded:
        def load() -> _Loaded:
            return _Loaded(*load_checker(Path(self.model_path), models.device))

        return models.get(("sd_safety_checker", self.model_path), load)

    @property
    def _pixels_key(self) -> tuple[str, str]:
        return ("sd_safety_pixels", self.model_path)

    def prepare(self, image: Any, state: _Loaded, inputs: dict[Any, Any]) -> None:
        """Host work: the feature extractor's pixels (it treats every image on its own)."""
        if self._pixels_key not in inputs:
            inputs[self._pixels_key] = _extract(state.extractor, image)

    def score(self, batch: ScoreBatch, state: _Loaded) -> list[dict[str, Score]]:
        import torch

        param = next(state.checker.parameters())
        pixels = batch.inputs(self._pixels_key, lambda im: _extract(state.extractor, im))
        parts = []
        for chunk, real in padded_chunks(pixels, self.compute_batch):
            values = torch.stack(list(chunk)).to(param.device, dtype=param.dtype)
            parts.append(concept_scores(state.checker, values)[:real])
        scores = torch.cat(parts).tolist()
        return [{"nsfw": float(v)} for v in scores]

    def aggregate(self, frames: Sequence[dict[str, Score]]) -> dict[str, Score]:
        """A clip: its most flagged frame."""
        return {"nsfw": max_score([f["nsfw"] for f in frames])}


def _extract(extractor: Any, image: Any) -> Any:
    return extractor([image], return_tensors="pt").pixel_values[0]
