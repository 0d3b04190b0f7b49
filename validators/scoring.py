"""Scorers on the driver (chosen and checked from the recipe) and on workers (one Beam
ModelHandler that runs every scorer on each batch)."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from pydantic import ValidationError

from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import Recipe, ScorerSpec, resolve_path
from synthgen.schemas.records import Sample, Score
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.host import pin_torch_threads
from synthgen.validators.frames import (
    DEFAULT_FRAMES,
    clip_fingerprint,
    decode_media,
    frame_images,
    is_clip,
    is_video,
)
from synthgen.validators.scorers.base import ScoreBatch, Scorer, WorkerModels, scorer_classes
from synthgen.validators.scorers.safety_checker import folder_checker

TEMPORAL = "temporal"


def build_scorers(recipe: Recipe, base_dir: Path) -> list[Scorer]:
    """The recipe's `scoring.scorers`, in order, with folders and options checked; a video
    build also gets the `temporal` scorer (last) unless it lists it.

    Raises ModelFolderError (a bad model folder) or ValueError (an unknown scorer, a bad
    option, two scorers writing one column), naming the scorer; no model is loaded.
    """
    classes = scorer_classes()
    scorers: list[Scorer] = []
    specs = list(recipe.scoring.scorers)
    if (
        recipe.model.safety_checker
        and "safety_checker" not in {s.name for s in specs}
        and folder_checker(resolve_path(base_dir, recipe.model.path)) is not None
    ):
        # A folder that ships a safety checker has it run on every image, unless the
        # recipe switches it off (`model.safety_checker: false`).
        specs.append(ScorerSpec(name="safety_checker"))
    if is_video(recipe) and TEMPORAL not in {s.name for s in specs}:
        specs.append(ScorerSpec(name=TEMPORAL))  # every clip's motion and flicker
    for spec in specs:
        cls = classes.get(spec.name)
        where = f"scoring.scorers: scorer {spec.name!r}"
        if cls is None:
            raise ValueError(f"{where}: unknown scorer; known: {', '.join(classes)}")
        try:
            options = cls.options_model.model_validate(spec.options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<options>'}: "
                + ("unknown option" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            )
            raise ValueError(f"{where}: invalid options: {problems}") from None
        try:
            scorers.append(cls.from_recipe(recipe, base_dir, options))
        except ModelFolderError as exc:
            raise ModelFolderError(f"{where}: {exc}") from None
    score_columns(scorers)  # two scorers writing one column fail here
    return scorers


def score_columns(scorers: Sequence[Scorer]) -> list[ScoreColumn]:
    """Every column the scorers write, in scorer order; a column written twice is an error."""
    columns: list[ScoreColumn] = []
    owner: dict[str, str] = {}
    for scorer in scorers:
        for column in scorer.columns():
            if column.name in owner:
                raise ValueError(
                    f"scoring.scorers: column {column.name!r} is written by both "
                    f"{owner[column.name]!r} and {scorer.name!r}"
                )
            owner[column.name] = scorer.name
            columns.append(column)
    return columns


def scorer_provenance(scorers: Sequence[Scorer]) -> list[dict[str, Any]]:
    """Per scorer: name, version, model, weights sha256, library and the columns it wrote.

    This is the build-wide `scorers` provenance field and the manifest's `scorers` list.
    """
    return [{**s.identity().to_dict(), "columns": [c.name for c in s.columns()]} for s in scorers]


def phash(image: Any) -> str:
    """64-bit perceptual hash (hex) of a decoded image: what near-duplicate checks compare."""
    import imagehash

    return str(imagehash.phash(image))


@dataclass
class LoadedScorers:
    scorers: tuple[Scorer, ...]
    states: tuple[Any, ...]
    models: WorkerModels
    frames: int = DEFAULT_FRAMES  # the frames of each clip the scorers measure


@dataclass
class Prepared:
    """One sample after its host work: fingerprint, host-only scorers' columns, and the
    inputs its device scorers need (e.g. CLIP's pixels), made from its in-memory image.

    A clip's `frames` are its sampled frames (PIL images) and `frame_inputs` each frame's
    device inputs; `image` is then the clip itself and `inputs` is empty."""

    sample: Sample
    image: Any  # the decoded (PIL, RGB) image the scorers measure; a clip's pixels
    rows: dict[int, dict[str, Score]]  # scorer index -> its columns (host-only scorers)
    inputs: dict[Hashable, Any]
    frames: tuple[Any, ...] = ()
    frame_inputs: tuple[dict[Hashable, Any], ...] = ()

    def units(self) -> tuple[list[Any], list[dict[Hashable, Any]]]:
        """The images the device scorers see for this sample, with their inputs: the image
        itself, or a clip's sampled frames."""
        if self.frames:
            return list(self.frames), list(self.frame_inputs)
        return [self.image], [self.inputs]


def _checked(scorer: Scorer, rows: list[dict[str, Score]], n: int) -> list[dict[str, Score]]:
    declared = {c.name for c in scorer.columns()}
    if len(rows) != n or any(set(r) != declared for r in rows):
        raise RuntimeError(
            f"scorer {scorer.name!r} returned {len(rows)} rows for {n} samples "
            f"or columns other than {sorted(declared)}"
        )
    return rows


def _aggregated(scorer: Scorer, frames: list[dict[str, Score]]) -> dict[str, Score]:
    """One clip's row of `scorer` from its frames' rows (checked)."""
    return _checked(scorer, [scorer.aggregate(frames)], 1)[0]


def prepare_sample(loaded: LoadedScorers, sample: Sample, image: Any) -> Prepared:
    """Host work for one image (any thread, off the device's critical path): its perceptual
    hash, the host-only scorers' columns, and the device scorers' inputs.

    `image` is a decoded PIL image, or a clip: uint8 (F, H, W, 3) pixels (`prepare_clip`)."""
    if is_clip(image):
        return prepare_clip(loaded, sample, image)
    rows: dict[int, dict[str, Score]] = {}
    inputs: dict[Hashable, Any] = {}
    for i, (scorer, state) in enumerate(zip(loaded.scorers, loaded.states, strict=True)):
        if scorer.host_only:
            rows[i] = _checked(scorer, scorer.score(ScoreBatch([sample], [image]), state), 1)[0]
        else:
            scorer.prepare(image, state, inputs)
    return Prepared(
        dataclasses.replace(sample, media=sample.media.with_fingerprint(phash(image))),
        image,
        rows,
        inputs,
    )


def prepare_clip(loaded: LoadedScorers, sample: Sample, clip: Any) -> Prepared:
    """Host work for one clip: `loaded.frames` frames sampled (`frame_indices`), the
    host-only scorers' columns (of the sampled frames, aggregated; a `clips_only` scorer's
    of every frame) and each frame's device inputs. The fingerprint the codec gave the
    media is kept; one without is fingerprinted here (`clip_fingerprint`)."""
    frames = frame_images(clip, loaded.frames)
    rows: dict[int, dict[str, Score]] = {}
    frame_inputs: tuple[dict[Hashable, Any], ...] = tuple({} for _ in frames)
    for i, (scorer, state) in enumerate(zip(loaded.scorers, loaded.states, strict=True)):
        if scorer.clips_only:
            rows[i] = _checked(scorer, [scorer.score_clip(sample, clip, state)], 1)[0]
        elif scorer.host_only:
            batch = ScoreBatch([sample] * len(frames), frames)
            rows[i] = _aggregated(scorer, _checked(scorer, scorer.score(batch, state), len(frames)))
        else:
            for frame, inputs in zip(frames, frame_inputs, strict=True):
                scorer.prepare(frame, state, inputs)
    media = sample.media
    if not media.fingerprint:
        media = media.with_fingerprint(clip_fingerprint(clip))
    return Prepared(
        dataclasses.replace(sample, media=media), clip, rows, {}, tuple(frames), frame_inputs
    )


def score_prepared(loaded: LoadedScorers, prepared: Sequence[Prepared]) -> list[Sample]:
    """The device scorers on prepared samples (one batch, fixed-shape model calls inside):
    new Samples with every scorer's columns merged into `scores`, in scorer order.

    A clip's sampled frames join the batch as images (N clips of K frames: N * K images,
    in the scorers' fixed-shape batches) and each scorer's rows of them are aggregated."""
    pin_torch_threads(loaded.models.device, loaded.models.cpu_threads)  # this thread's
    samples: list[Sample] = []
    images: list[Any] = []
    inputs: list[dict[Hashable, Any]] = []
    spans: list[tuple[int, int]] = []
    for p in prepared:
        units, unit_inputs = p.units()
        spans.append((len(images), len(images) + len(units)))
        samples += [p.sample] * len(units)
        images += units
        inputs += unit_inputs
    batch = ScoreBatch(samples, images, inputs)
    rows: list[dict[int, dict[str, Score]]] = [dict(p.rows) for p in prepared]
    for i, (scorer, state) in enumerate(zip(loaded.scorers, loaded.states, strict=True)):
        if not scorer.host_only:
            found = _checked(scorer, scorer.score(batch, state), len(batch))
            for p, mine, (start, end) in zip(prepared, rows, spans, strict=True):
                mine[i] = _aggregated(scorer, found[start:end]) if p.frames else found[start]
    out = []
    for p, by_scorer in zip(prepared, rows, strict=True):
        scores: dict[str, Score] = dict(p.sample.scores)
        for i in range(len(loaded.scorers)):
            scores.update(by_scorer[i])
        out.append(dataclasses.replace(p.sample, scores=scores))
    return out


def score_samples(loaded: LoadedScorers, samples: Sequence[Sample]) -> list[Sample]:
    """New Samples with every scorer's columns merged into `scores` and `phash` set.

    Each image (or clip) is decoded once for all scorers; the input samples are left
    untouched. The same steps a build streams (`prepare_sample` per image, then
    `score_prepared`).
    """
    return score_prepared(loaded, [prepare_sample(loaded, s, decode_media(s)) for s in samples])


class ScoreSamples(ModelHandler[Sample, PredictionResult, LoadedScorers]):
    """Runs every scorer on each batch of samples; loads all of them once per worker.

    Each element is one generation batch (a list of Samples), scored as one result whose
    `inference` is the list of new, scored Samples. Scorers add columns; they never drop.
    """

    def __init__(
        self,
        scorers: Sequence[Scorer],
        device: str,
        cpu_threads: int = 1,
        frames: int = DEFAULT_FRAMES,
    ):
        super().__init__()
        self._scorers = tuple(scorers)
        self._device = device
        self._cpu_threads = cpu_threads
        self._frames = frames  # of each clip, the frames scored (`recipe_frames`)

    def load_model(self) -> LoadedScorers:
        models = WorkerModels(self._device, self._cpu_threads)
        states = tuple(s.load(models) for s in self._scorers)
        return LoadedScorers(self._scorers, states, models, self._frames)

    def run_inference(
        self,
        batch: Sequence[Sample],
        model: LoadedScorers,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        yield PredictionResult(example=list(batch), inference=score_samples(model, batch))

    def should_skip_batching(self) -> bool:
        return True  # elements arrive as the generation step's batches

    def get_metrics_namespace(self) -> str:
        return "synthgen_score"
