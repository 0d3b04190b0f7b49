"""Closed-loop balancing (`balance.strategy: feedback`): a probe decides what comes next.

Before every round a probe classifier (validators.probe) is trained on the CLIP image
embeddings of the real images plus the synthetic images accepted so far, and cross-validated
on the real images. The round's `round_budget` goes to the classes still short of their
target, each at least its `floor` share and the rest in proportion to the probe's held-out
error on it (a class the probe gets right gets its floor only; when it misreads no held-out
image of any short class, in proportion to the soft error, 1 - the true class's probability,
which still ranks them). Within a class, its samples are drawn toward what the probe gets
wrong (`PlanRound.focus`): image-conditioned samples start from the real images it
misclassifies (else those of lowest margin), and prompt templates are weighted toward the
error clusters of the class's real embeddings. The rounds
stop at `max_synthetic` planned samples, when the held-out macro soft error stops improving
by `min_delta` for `patience` rounds, when every class reached its target, or at `max_rounds`.

Everything is a pure function of the recipe, the source and the earlier rounds' shards (the
probe is seeded and trained on one CPU thread), so `--resume` replays every round and
reuses its finished shards. Each round's probe is saved under `_feedback/`; with
`guidance: feedback` the round's `PlanRound.guidance` names it for the workers.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from synthgen.pipelines.session import BuildSession, Finish
from synthgen.pipelines.strategies.balance import Balance
from synthgen.schemas.manifest import (
    ClassFocus,
    FeedbackInfo,
    FeedbackRound,
    FeedbackStop,
    FileInfo,
    PlanRound,
    ProbeMetrics,
    RoundGuidance,
)
from synthgen.schemas.recipe import RecipeError
from synthgen.schemas.recipe.balance import FeedbackSpec
from synthgen.schemas.scores import image_embedding_column
from synthgen.storage.atomic import write_bytes_atomic
from synthgen.validators.probe import (
    BASELINE_METHOD,
    Evaluation,
    Extra,
    class_clusters,
    cross_validate,
    oversampled,
    pixel_features,
    pixel_name,
    train_probe,
)

logger = logging.getLogger(__name__)

FEEDBACK_DIR = "_feedback"
FOCUS_SOURCES = 3  # a class's focus holds at least this many real images (all, if fewer)
PROMPT_TEMPERATURE = 0.1  # softness of the prompt weights (cosine similarity units)


def probe_name(round_: int) -> str:
    """Where the probe trained before round `round_` is saved, relative to the build."""
    return f"{FEEDBACK_DIR}/probe-{round_}.safetensors"


# -- allocation ----------------------------------------------------------------------------


def allocate(
    errors: Mapping[int, float], caps: Mapping[int, int], budget: int, floor: float
) -> dict[int, int]:
    """`budget` samples over the classes of `caps` (class id -> the most it can use): each
    its floor (`floor` of the budget, less when the floors would not fit), then the rest in
    proportion to `errors` (largest remainders first, ties by class id); a class with error
    0 gets its floor only. Spare samples of a class at its cap go to the others."""
    classes = sorted(c for c, cap in caps.items() if cap > 0)
    if not classes or budget <= 0:
        return {}
    base = min(math.floor(floor * budget), budget // len(classes))
    out = {c: min(base, caps[c]) for c in classes}
    left = budget - sum(out.values())
    while left > 0:
        open_ = [c for c in classes if out[c] < caps[c] and errors.get(c, 1.0) > 0]
        if not open_:
            break
        total = sum(errors.get(c, 1.0) for c in open_)
        shares = {c: left * errors.get(c, 1.0) / total for c in open_}
        give = {c: math.floor(s) for c, s in shares.items()}
        by_remainder = sorted(open_, key=lambda c: (-(shares[c] - give[c]), c))
        for c in by_remainder[: left - sum(give.values())]:
            give[c] += 1
        for c in open_:
            take = min(give[c], caps[c] - out[c])
            out[c] += take
            left -= take
    return {c: n for c, n in out.items() if n > 0}


def allocation_errors(
    ev: Evaluation, short: Mapping[int, int], by: str = "error"
) -> tuple[dict[int, float], str]:
    """What the allocation is proportional to, and its name: the held-out error of each
    class; when the probe misreads no held-out image of any short class, or with `by`
    `soft_error`, the soft error (1 - the true class's probability), which still ranks them."""
    if by == "soft_error":
        return dict(ev.per_class_soft_error), "held-out soft error"
    if any(ev.per_class_error.get(c, 1.0) > 0 for c in short):
        return dict(ev.per_class_error), "held-out error"
    return dict(ev.per_class_soft_error), "held-out soft error (no short class misread)"


def reason(
    errors: Mapping[int, float], what: str, alloc: Mapping[int, int], names: Mapping[int, str]
) -> str:
    """One sentence: where the probe errs, and what the round plans for it."""
    ranked = sorted(alloc, key=lambda c: (-errors.get(c, 1.0), c))
    parts = ", ".join(f"{names[c]} {errors.get(c, 1.0):.3f}" for c in ranked[:3])
    return (
        f"{sum(alloc.values())} samples over {len(alloc)} short class(es) in proportion to "
        f"the probe's {what} (highest: {parts}), each at least its floor"
    )


# -- the real images -----------------------------------------------------------------------


@dataclass(frozen=True)
class RealSet:
    """The source's real images as the probe sees them: its features `x` (the image
    embeddings, or grey pixels), labels, references, k-means cluster within the class (of
    the embeddings `emb`), and which classes started short."""

    x: np.ndarray
    y: np.ndarray
    refs: list[str]
    clusters: np.ndarray
    minority: list[int]
    emb: np.ndarray

    def centroids(self, c: int) -> dict[int, np.ndarray]:
        """Cluster id -> the unit-length mean embedding of class `c`'s cluster."""
        out = {}
        for k in np.unique(self.clusters[self.y == c]):
            mean = self.emb[(self.y == c) & (self.clusters == k)].mean(axis=0)
            out[int(k)] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return out


def hard_sources(
    real: RealSet, ev: Evaluation, c: int, pool: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The real images of class `c` the probe misclassifies (at least FOCUS_SOURCES: the
    lowest-margin ones), lowest margin first, as (reference, sha256) of the conditioning
    pool `pool` (reference -> sha256)."""
    where = [i for i in np.flatnonzero(real.y == c) if real.refs[i] in pool]
    order = sorted(where, key=lambda i: (float(ev.margin[i]), real.refs[i]))
    wrong = [i for i in order if ev.predicted[i] != c]
    chosen = wrong if len(wrong) >= min(FOCUS_SOURCES, len(order)) else order[:FOCUS_SOURCES]
    return [(real.refs[i], pool[real.refs[i]]) for i in chosen]


def prompt_weights(
    texts: np.ndarray, centroids: Mapping[int, np.ndarray], cluster_error: Sequence[float]
) -> list[float] | None:
    """Weights of a class's prompt templates (their text embeddings `texts`) toward its
    error clusters: each prompt's cosine similarity to the clusters' centroids, weighted by
    their error, softened (half the weight stays even, so every prompt keeps a share).
    None: nothing to weight (one prompt, or no error)."""
    errors = np.asarray(cluster_error, dtype=np.float64)
    if len(texts) < 2 or errors.sum() <= 0:
        return None
    mu = np.stack([centroids[k] for k in sorted(centroids)])
    score = (np.asarray(texts, dtype=np.float64) @ mu.T) @ errors / errors.sum()
    soft = np.exp((score - score.max()) / PROMPT_TEMPERATURE)
    weights = 0.5 / len(texts) + 0.5 * soft / soft.sum()
    return [round(float(w), 6) for w in weights]


def probe_metrics(ev: Evaluation, names: Mapping[int, str]) -> ProbeMetrics:
    return ProbeMetrics(
        error=ev.error,
        macro_error=ev.macro_error,
        macro_f1=ev.macro_f1,
        minority_recall=ev.minority_recall,
        per_class_error={names[c]: e for c, e in ev.per_class_error.items()},
        per_cluster_error={names[c]: e for c, e in ev.per_cluster_error.items()},
        macro_soft_error=ev.macro_soft_error,
        per_class_soft_error={names[c]: e for c, e in ev.per_class_soft_error.items()},
    )


def plateaued(errors: Sequence[float], patience: int, min_delta: float) -> bool:
    """Whether the last `patience` errors each failed to beat the best before them by
    `min_delta`."""
    if len(errors) <= patience:
        return False
    best = min(errors[: len(errors) - patience])
    return all(e > best - min_delta for e in errors[len(errors) - patience :])


# -- the strategy --------------------------------------------------------------------------


class Feedback(Balance):
    """Rounds planned where a probe classifier trained on the data so far errs (see module)."""

    def prepare(self) -> None:
        """The feedback options checked (before the source is read), then Balance's."""
        self._fb: FeedbackSpec = self._spec.feedback_settings
        self._column = image_embedding_column(self.resolved.score_columns)
        if self._column is None:
            raise RecipeError(
                "balance.strategy: feedback trains its probe on the stored image embeddings: "
                "add `{name: clip_embedding}` to scoring.scorers"
            )
        if self._fb.features == "pixels" and self.recipe.sampling.num_frames is not None:
            raise RecipeError(
                "balance.feedback.features: pixels reads still images; a clip build "
                "(sampling.num_frames) uses `features: image_embedding`"
            )
        self._check_guidance()
        super().prepare()
        self._seed = self.recipe.seed if self._fb.seed is None else self._fb.seed
        self.feedback_rounds: list[FeedbackRound] = []
        self._errors: list[float] = []
        self._planned = 0
        self.stop: str | None = None
        self._probe_files: dict[str, FileInfo] = {}
        self._features: dict[int, dict[str, np.ndarray]] = {}  # shard -> class -> features

    def _check_guidance(self) -> None:
        """`guidance: feedback` needs the guidance module, and a family it can steer."""
        if self._fb.guidance != "feedback":
            return
        name = "synthgen.generators.guidance"
        if importlib.util.find_spec(name) is None:
            raise RecipeError(
                "balance.feedback.guidance: feedback: sampling-time guidance is not available "
                "in this installation (no synthgen.generators.guidance); use `guidance: none`"
            )
        refuse = getattr(importlib.import_module(name), "refuse_guidance", None)
        if refuse is not None and self.resolved.model is not None:
            from synthgen.generators.conditioning import DERIVED_PIPELINES

            family = self.resolved.model.class_name
            derived = DERIVED_PIPELINES.get(family, {}).get("img2img")
            refuse(family, derived if self._spec.uses_img2img else None)

    def _need(self) -> dict[int, int]:
        """Nothing is owed at the end: a feedback build stops at its budget or plateau, and
        its targets only cap what each class may receive (see `_short`)."""
        return {}

    def _short(self) -> dict[int, int]:
        return {c: d - self.accepted[c] for c, d in self.deficit.items() if d > self.accepted[c]}

    def begin(self, session: BuildSession) -> None:
        """The real images embedded (once per source content and CLIP model: the reference
        cache), their clusters, the prompts' text embeddings and the oversampling baseline."""
        super().begin(session)
        self._session = session
        self.real, images = self._embed_real(session)
        self._classes = [c.id for c in self.recipe.classes]
        self._texts = self._prompt_embeddings()
        baseline = oversampled(images, self.real.y, self.real.minority, self._encode, self._seed)
        self.baseline = self._evaluate(baseline)

    def _embed_real(self, session: BuildSession) -> tuple[RealSet, dict[int, Any]]:
        from synthgen.pipelines.references import ReferenceInput, prepare_reference
        from synthgen.schemas.manifest import STATE_DIR
        from synthgen.storage.images import decode_image
        from synthgen.validators.nearest import read_reference

        assert self.resolved.balance_source is not None
        clip = self._clip()
        ref = ReferenceInput("reference", self.resolved.balance_source, self._spec, 10_000_000)
        cache = session.out / STATE_DIR / "references"
        device = self.recipe.model.device
        made = prepare_reference(self.recipe, ref, clip, cache, device, self._models())
        embedded = read_reference(made)
        y = np.asarray(embedded.labels, dtype=np.int64)
        minority = sorted(c for c, d in self.deficit.items() if d > 0)
        index = {r: i for i, r in enumerate(embedded.refs)}
        pixels = self._fb.features == "pixels"
        wanted = {i for i, c in enumerate(embedded.labels) if pixels or c in minority}
        images = {
            index[im.reference]: decode_image(im.data)
            for im in self.source.iter_images()
            if index.get(im.reference) in wanted
        }
        emb = np.asarray(embedded.embeddings, dtype=np.float32)
        x = self._encode([images[i] for i in range(len(y))]) if pixels else emb
        clusters = class_clusters(emb, y, self._fb.clusters, self._seed)
        real = RealSet(x, y, list(embedded.refs), clusters, minority, emb)
        return real, {i: im for i, im in images.items() if int(y[i]) in minority}

    def _clip(self) -> Any:
        from synthgen.pipelines.references import embedding_encoder

        return embedding_encoder(self.resolved.scorers)

    def _models(self) -> Any:
        """The session's driver models (a WorkerModels): the reference sets, the real
        images, the prompts, the oversampling baseline and every round's pixels share the
        CLIP copy loaded on first use."""
        return self._session.driver_models

    def _encode(self, images: list[Any]) -> np.ndarray:
        """The probe's features of decoded images."""
        from synthgen.validators.nearest import clip_encoder

        if self._fb.features == "pixels":
            return pixel_features(images, self._fb.pixels_size)
        m = self.recipe.model
        encode = clip_encoder(self._clip(), m.device, m.cpu_threads, self._models())
        return np.asarray(encode(images))

    def _prompt_embeddings(self) -> dict[int, np.ndarray]:
        """Class id -> its prompt templates' normalised CLIP text embeddings."""
        from synthgen.validators.clip_model import encode_texts

        clip = self._clip()
        bundle = clip.load(self._models())
        return {
            c.id: np.asarray(encode_texts(bundle, list(c.prompts), clip.compute_batch).numpy())
            for c in self.recipe.classes
            if len(c.prompts) > 1
        }

    def _evaluate(self, extra: Extra | None) -> Evaluation:
        real = self.real
        return cross_validate(
            real.x,
            real.y,
            extra if extra is not None else Extra.none(real.x.shape[1]),
            self._classes,
            kind=self._fb.probe,
            folds=self._fb.folds,
            seed=self._seed,
            clusters=real.clusters,
            minority=real.minority,
        )

    def _synthetic(self) -> Extra:
        """The accepted synthetic images so far, by their stored embeddings (or their
        pixels, read back from the shards)."""
        shards = sorted(s.shard for o in self._session.rounds for s in o.stats)
        by_name = self._synthetic_features(shards)
        ids = {c.name: c.id for c in self.recipe.classes}
        xs = [v for _, v in sorted(by_name.items())]
        if not xs:
            return Extra.none(self.real.x.shape[1])
        ys = [np.full(len(v), ids[n]) for n, v in sorted(by_name.items())]
        x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
        return Extra(x, y, np.full(len(y), -1, dtype=np.int64))

    def _synthetic_features(self, shards: list[int]) -> dict[str, np.ndarray]:
        """Class name -> the probe's features of the accepted images of `shards`, in shard
        order: each finished shard is read once per build (its embedding column, or its
        images decoded), not once per round."""
        from synthgen.validators.metrics import build_embeddings, build_images

        assert self._column is not None
        for shard in shards:
            if shard in self._features:
                continue
            if self._fb.features == "pixels":
                images = build_images(self._session.out, [shard])
                self._features[shard] = {n: self._encode(ims) for n, ims in images.items()}
            else:
                self._features[shard] = build_embeddings(self._session.out, [shard], self._column)
        parts: dict[str, list[np.ndarray]] = {}
        for shard in shards:
            for name, x in self._features[shard].items():
                parts.setdefault(name, []).append(x)
        return {name: np.concatenate(v) for name, v in parts.items()}

    def _save_probe(self, round_: int, synthetic: Extra) -> tuple[str, str]:
        """The probe on every real image and the synthetic ones, saved for this round."""
        real = self.real
        probe = train_probe(
            np.concatenate([real.x, synthetic.x]),
            np.concatenate([real.y, synthetic.y]),
            self._classes,
            self._fb.probe,
            self._seed,
            embedding=self._probe_reads(),
        )
        data = probe.to_bytes()
        name = probe_name(round_)
        path = self._session.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        sha = hashlib.sha256(data).hexdigest()
        self._probe_files[name] = FileInfo(sha256=sha, bytes=len(data))
        return name, sha

    def _probe_reads(self) -> str:
        """What the probe's file records it reads: the CLIP model, or the pixel grid."""
        if self._fb.features == "pixels":
            return pixel_name(self._fb.pixels_size)
        return str(self._clip().name)

    def _stop_reason(
        self, short: Mapping[int, int], caps: Mapping[int, int], accepted: int
    ) -> str | None:
        """Why the build stops before this round, if it does. Every class still short given
        up on (`_caps`) ends a build that has accepted synthetic images (the rest reached
        their targets or the budget went to them) and fails one that has accepted none."""
        from synthgen.pipelines.output import BuildError

        if not short:
            return "targets"
        if not caps:
            if not accepted:
                raise BuildError(self._unfillable(dict(short)))
            return "given_up"
        if self._planned >= self._fb.max_synthetic:
            return "budget"
        if plateaued(self._errors, self._fb.patience, self._fb.min_delta):
            return "plateau"
        if len(self.history) >= self._spec.max_rounds:
            return "max_rounds"
        return None

    def _caps(self, short: Mapping[int, int]) -> tuple[dict[int, int], list[int]]:
        """What each short class can use this round (its need over its accept rate,
        `_planning_rate`, times `overgenerate`), and the classes given up on: those whose
        top-ups show they accept under `min_accept_rate` (`shown_below`: two rejected of two
        is no such evidence). A feedback build owes no class an exact count, so a class the
        checks keep rejecting is left where it is while the others go on (`_stop_reason`
        says what happens when none is left)."""
        caps, given_up = {}, []
        for c, n in short.items():
            rate = self._planning_rate(c)
            if rate is None:
                given_up.append(c)
                continue
            caps[c] = math.ceil(n / rate * self._spec.overgenerate)
        return caps, sorted(given_up)

    def _given_up(self, given_up: list[int]) -> str:
        """The reason's clause naming the classes given up on, with what they accepted."""
        parts = ", ".join(
            f"{self.names[c]} ({self.accepted[c]} of {self.attempted[c]} accepted)"
            for c in given_up
        )
        return f"; given up on (shown to accept under {self._spec.min_accept_rate:.0%}): {parts}"

    def next_round(self) -> PlanRound | None:
        """1. the probe on the data so far, cross-validated 2. stop? 3. the allocation by its
        errors 4. the focus within each class 5. the plan."""
        round_ = len(self.history)
        synthetic = self._synthetic()
        ev = self._evaluate(synthetic)
        self.evaluation = ev  # the latest probe's held-out results
        if round_ == 0:
            self.real_only = ev
        self._errors.append(ev.macro_soft_error)
        probe, sha = self._save_probe(round_, synthetic)
        short = self._short()
        caps, given_up = self._caps(short)
        self.stop = self._stop_reason(short, caps, synthetic.synthetic())
        # measured over the classes this round can still fill
        errors, what = allocation_errors(ev, caps, self._fb.allocate_by)
        budget = min(self._fb.round_budget, self._fb.max_synthetic - self._planned)
        alloc: dict[int, int] = {}
        if self.stop:
            why = f"stopped: {self.stop}"
        else:
            alloc = allocate(errors, caps, budget, self._fb.floor)
            why = reason(errors, what, alloc, self.names)
        if given_up:
            why += self._given_up(given_up)
            before = set(self.feedback_rounds[-1].given_up) if self.feedback_rounds else set()
            if new := [c for c in given_up if self.names[c] not in before]:
                logger.warning("feedback round %d%s", round_, self._given_up(new))
        self.feedback_rounds.append(
            FeedbackRound(
                round=round_,
                synthetic_so_far=synthetic.synthetic(),
                metrics=probe_metrics(ev, self.names),
                allocation={self.names[c]: n for c, n in sorted(alloc.items())},
                reason=why,
                given_up=[self.names[c] for c in given_up],
                probe=probe,
                probe_sha256=sha,
            )
        )
        logger.info(
            "feedback round %d: held-out error %.4f, soft %.4f; %s",
            round_,
            ev.macro_error,
            ev.macro_soft_error,
            why,
        )
        if self.stop:
            return None
        self._planned += sum(alloc.values())
        return self._plan(round_, alloc, short, ev, (probe, sha))

    def _plan(
        self,
        round_: int,
        alloc: Mapping[int, int],
        short: Mapping[int, int],
        ev: Evaluation,
        probe: tuple[str, str],
    ) -> PlanRound:
        counts = dict(self.attempted)
        for c, n in alloc.items():
            counts[c] = self.attempted[c] + n
        fb = self._fb
        guidance = None
        if fb.guidance == "feedback":
            guidance = RoundGuidance(
                probe=probe[0],
                probe_sha256=probe[1],
                criterion=fb.criterion,
                scale=fb.scale,
                every=fb.every,
            )
        self._last = PlanRound(
            round=round_,
            counts=counts,
            start=dict(self.attempted),
            shard_offset=self.shard_offset,
            quota={c: short[c] for c in alloc},
            focus=self._focus(alloc, ev) or None,
            guidance=guidance,
        )
        return self._last

    def _focus(self, alloc: Mapping[int, int], ev: Evaluation) -> dict[int, ClassFocus]:
        """Per allocated class: the hard real images (image-conditioned builds) and prompt
        weights toward its error clusters."""
        conditioning = self.resolved.conditioning
        out = {}
        for c in sorted(alloc):
            sources: list[tuple[str, str]] = []
            cc = None if conditioning is None else conditioning.for_class(c)
            if cc is not None and cc.pool:
                sources = hard_sources(self.real, ev, c, dict(cc.pool))
            weights = None
            if c in self._texts and c in ev.per_cluster_soft_error:
                weights = prompt_weights(
                    self._texts[c], self.real.centroids(c), ev.per_cluster_soft_error[c]
                )
            if sources or weights is not None:
                out[c] = ClassFocus(sources=sources, prompt_weights=weights)
        return out

    def finish(self, session: BuildSession) -> Finish:
        """Balance's index and block, with the feedback rounds, the baselines and the
        probe files."""
        done = super().finish(session)
        assert self.stop is not None
        info = FeedbackInfo(
            rounds=self.feedback_rounds,
            stop=cast(FeedbackStop, self.stop),
            baseline=probe_metrics(self.baseline, self.names),
            real_only=probe_metrics(self.real_only, self.names),
            baseline_method=BASELINE_METHOD,
        )
        extra = dict(done.extra)
        extra["balance"] = extra["balance"].model_copy(update={"feedback": info})
        extra["files"] = {**extra["files"], **self._probe_files}
        return Finish(targets=None, extra=extra)  # no class owes an exact count
