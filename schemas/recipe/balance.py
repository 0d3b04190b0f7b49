"""Balancing: top up the classes of an existing labelled dataset to a target count, open
loop (`strategy: topup`) or where a probe classifier finds the data hard (`feedback`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.recipe.common import MAX_COUNT_PER_CLASS, _Frozen
from synthgen.schemas.recipe.fields import HashOmit
from synthgen.schemas.recipe.sources import AtSource, LabelledSource

# How sure a build must be that a class accepts under `min_accept_rate` before it gives the
# class up: a few rejected top-ups are no evidence (a class accepting half of its images
# rejects both of its first two a quarter of the time).
GIVE_UP_CONFIDENCE = 0.95


class LoraTrainSpec(_Frozen):
    """A small LoRA on the UNet's attention projections, fine-tuned on one class's real
    images (seeded: the same images, recipe and model give the same adapter bytes)."""

    steps: int = Field(default=200, ge=1, le=100_000)
    rank: int = Field(default=4, ge=1, le=256)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    batch: int = Field(default=16, ge=1, le=1024)
    scale: float = Field(default=1.0, ge=-10.0, le=10.0, description="weight when generating")
    max_images: int = Field(
        default=1000, ge=1, le=1_000_000, description="real images per class read at most"
    )
    threads: int = Field(default=1, ge=1, le=256, description="torch threads while training")


class FeedbackSpec(_Frozen):
    """Closed-loop balancing (`strategy: feedback`): each round a probe classifier on the CLIP
    image embeddings (or, `features: pixels`, the images' grey pixels), trained on the real
    images and the synthetic ones accepted so far, is cross-validated on the real images; the
    next round's samples go to the short classes (and, within a class, the regions) it gets
    wrong."""

    probe: Literal["linear", "mlp"] = Field(
        default="linear", description="multinomial logistic regression, or a one-layer MLP"
    )
    features: Annotated[Literal["image_embedding", "pixels"], HashOmit.IF_DEFAULT] = Field(
        default="image_embedding",
        description="what the probe reads: the stored CLIP image embeddings, or the images' "
        "grey pixels averaged down to `pixels_size` x `pixels_size` (for data a pixel "
        "classifier separates better than the embedding does; the clusters and prompt "
        "weights still use the embeddings)",
    )
    allocate_by: Annotated[Literal["error", "soft_error"], HashOmit.IF_DEFAULT] = Field(
        default="error",
        description="what a round's budget follows: the held-out error of each class (its "
        "soft error when the probe misreads no short class), or always the soft error (1 - "
        "the true class's probability: steadier when a class has a handful of real images)",
    )
    pixels_size: Annotated[int, HashOmit.IF_DEFAULT] = Field(
        default=8, ge=2, le=64, description="side of the grey pixel grid (`features: pixels`)"
    )
    folds: int = Field(
        default=3,
        ge=2,
        le=20,
        description="stratified cross-validation folds over the real images (fewer when a "
        "class has fewer images, at least 2)",
    )
    clusters: int = Field(
        default=3, ge=1, le=64, description="k-means clusters of a class's real embeddings"
    )
    floor: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="share of a round's budget every short class gets at least",
    )
    round_budget: int = Field(
        default=200, ge=1, le=MAX_COUNT_PER_CLASS, description="samples planned per round"
    )
    max_synthetic: int = Field(
        default=1000,
        ge=1,
        le=MAX_COUNT_PER_CLASS,
        description="samples planned over all rounds at most (the build's budget)",
    )
    patience: int = Field(
        default=1,
        ge=1,
        le=20,
        description="rounds without a held-out improvement of `min_delta` before stopping",
    )
    min_delta: float = Field(
        default=0.005,
        ge=0.0,
        le=1.0,
        description="how far the probe's held-out macro soft error (1 - the true class's "
        "probability, averaged per class) must fall to count as an improvement",
    )
    seed: int | None = Field(
        default=None, ge=0, description="probe, k-means and fold seed (null: the recipe's)"
    )
    guidance: Literal["none", "feedback"] = Field(
        default="none",
        description="`feedback`: steer sampling with the round's probe (its criterion's "
        "gradient on the predicted clean image)",
    )
    criterion: Literal["loss", "entropy"] = Field(
        default="loss",
        description="what the guidance lowers: the probe's cross-entropy for the sample's "
        "class (`loss`), or the entropy of its prediction",
    )
    scale: float = Field(
        default=0.1,
        ge=-10.0,
        le=10.0,
        description="guidance step in latent units (the RMS change of a latent value): "
        "positive lowers the criterion (samples the probe finds typical of their class), "
        "negative raises it (samples it finds hard)",
    )
    every: int = Field(default=2, ge=1, le=1000, description="guide every k denoising steps")

    @model_validator(mode="after")
    def _budget(self) -> FeedbackSpec:
        if self.round_budget > self.max_synthetic:
            raise ValueError(
                f"feedback.round_budget ({self.round_budget}) is over feedback.max_synthetic "
                f"({self.max_synthetic}): a round plans at most the whole budget"
            )
        if self.scale == 0.0:
            raise ValueError("feedback.scale 0 guides nothing: use `guidance: none`")
        if self.features == "pixels" and self.guidance == "feedback":
            raise ValueError(
                "feedback.guidance: feedback steers sampling through the CLIP image tower, "
                "which a pixel probe does not read: use `features: image_embedding`, or "
                "`guidance: none`"
            )
        if self.features != "pixels" and self.pixels_size != 8:
            raise ValueError(
                "feedback.pixels_size sets the pixel probe's grid: add `features: pixels`, "
                "or leave it out"
            )
        if self.guidance == "none" and (
            self.criterion != "loss" or self.scale != 0.1 or self.every != 2
        ):
            raise ValueError(
                "feedback.criterion / scale / every set the sampling guidance: add "
                "`guidance: feedback`, or leave them out"
            )
        return self


# How balancing conditions its top-ups; one name per way (extend the Literal to add one).
BalanceConditioning = Literal["text", "img2img", "lora"]
# The per-sample modes a mix of top-ups may combine (`lora` applies to a whole class).
BalanceMixMode = Literal["text", "img2img"]
BALANCE_IMG2IMG_STRENGTH = 0.6


class BalanceSpec(LabelledSource, AtSource):
    """Top up the classes of an existing labelled dataset to a target count after filtering
    (`strategy: topup`), or where a probe classifier errs, within a budget (`feedback`)."""

    target: Literal["max"] | int | dict[str, int] = Field(
        default="max",
        description="accepted images per class after balancing: `max` (the largest class's "
        "count), a number, or per class name",
    )
    max_rounds: int = Field(default=4, ge=1, le=20)
    overgenerate: float = Field(
        default=1.1,
        ge=1.0,
        le=10.0,
        description="margin on top of the accept rate a round is planned by",
    )
    min_accept_rate: float = Field(
        default=0.02,
        gt=0.0,
        le=1.0,
        description=f"a class whose top-ups show (at {GIVE_UP_CONFIDENCE:.0%} confidence: the "
        "upper bound of its accept rate) that it accepts less is given up on",
    )
    conditioning: Annotated[
        BalanceConditioning | dict[BalanceMixMode, float], HashOmit.IF_DEFAULT
    ] = Field(
        default="text",
        description="how top-ups are conditioned: `text` (the class prompts), `img2img` (each "
        "top-up starts from one of its class's real images, `strength`), `lora` (the class "
        "prompts through a LoRA trained per class on its real images: `adapt: lora`), or a "
        "mix `{text: w, img2img: w}` (or a list of modes, equal shares): each top-up's mode "
        "drawn from (seed, key) with these weights",
    )
    strength: Annotated[float | None, HashOmit.IF_EMPTY] = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="conditioning img2img: how far a top-up moves from its real image (null: 0.6)",
    )
    adapt: Annotated[Literal["none", "lora"], HashOmit.IF_DEFAULT] = Field(
        default="none",
        description="`lora`: before a class's top-up, train a small LoRA on that class's real "
        "images (settings in `lora`), save it under adapters/, generate with it",
    )
    lora: Annotated[LoraTrainSpec | None, HashOmit.IF_DEFAULT] = Field(
        default=None, description="per-class LoRA training settings (null: the defaults)"
    )
    strategy: Annotated[Literal["topup", "feedback"], HashOmit.IF_DEFAULT] = Field(
        default="topup",
        description="`topup`: every short class up to its target (open loop); `feedback`: "
        "rounds planned where a probe classifier errs, within `feedback.max_synthetic`",
    )
    feedback: Annotated[FeedbackSpec | None, HashOmit.IF_EMPTY] = Field(
        default=None, description="strategy feedback: its settings (null: the defaults)"
    )

    @model_validator(mode="after")
    def _feedback_only_with_its_strategy(self) -> BalanceSpec:
        if self.feedback is not None and self.strategy != "feedback":
            raise ValueError("balance.feedback is for `strategy: feedback`; add it or remove it")
        return self

    @property
    def feedback_settings(self) -> FeedbackSpec:
        """The feedback strategy's settings (the defaults when the block is left out)."""
        return self.feedback or FeedbackSpec()

    @field_validator("conditioning", mode="before")
    @classmethod
    def _mix(cls, v: object) -> object:
        """A list of modes is an equal mix; weights become shares summing to 1 (so equal
        mixes hash equal); a mix of one mode is that mode."""
        if isinstance(v, list | tuple):
            if not v or not all(isinstance(m, str) for m in v):
                raise ValueError("a list of modes names at least one mode, e.g. [text, img2img]")
            if len(set(v)) != len(v):
                raise ValueError(f"a mode is listed twice in {list(v)}")
            v = {m: 1.0 for m in v}
        if not isinstance(v, dict):
            return v
        if "lora" in v:
            raise ValueError(
                "lora applies to a whole class, not to a share of its top-ups: mix text and "
                "img2img, and add `adapt: lora` to generate both through the class's LoRA"
            )
        weights: dict[Any, Any] = dict(v)
        for mode, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not w >= 0:
                raise ValueError(f"mix weight of {mode!r}: a number >= 0, not {w!r}")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError("a mix needs at least one mode of weight > 0")
        shares = {m: float(w) / total for m, w in sorted(weights.items()) if w > 0}
        if len(shares) == 1:
            return next(iter(shares))
        return shares

    @property
    def mix(self) -> dict[str, float]:
        """Each per-sample mode's share of the top-ups (`lora` counts as `text`: the class's
        prompts, through its LoRA)."""
        c = self.conditioning
        if isinstance(c, dict):
            return {str(m): w for m, w in c.items()}
        return {"img2img" if c == "img2img" else "text": 1.0}

    @property
    def uses_img2img(self) -> bool:
        """Whether some top-ups start from the class's real images."""
        return self.mix.get("img2img", 0.0) > 0.0

    @property
    def trains_lora(self) -> bool:
        """Whether each topped-up class gets a LoRA trained on its real images."""
        return self.adapt == "lora" or self.conditioning == "lora"

    @property
    def lora_settings(self) -> LoraTrainSpec:
        return self.lora or LoraTrainSpec()

    @field_validator("target")
    @classmethod
    def _positive_target(cls, v: object) -> object:
        if isinstance(v, int) and v < 1:
            raise ValueError("target must be at least 1")
        if isinstance(v, dict) and any(n < 0 for n in v.values()):
            raise ValueError("per-class targets must not be negative")
        values = [v] if isinstance(v, int) else list(v.values()) if isinstance(v, dict) else []
        if any(n > MAX_COUNT_PER_CLASS for n in values):
            raise ValueError(f"target: at most {MAX_COUNT_PER_CLASS} per class")
        return v
