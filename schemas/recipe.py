"""The recipe: what a build makes. Validated, frozen, hashed; no I/O beyond reading the YAML."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from synthgen.schemas.templates import (
    MAX_CHECKED_EXPANSIONS,
    count_expansions,
    iter_expansions,
    slot_values,
)

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

# scheme://netloc path rest: a scheme of two letters or more (one is a Windows drive)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://([^/?#]*)([^?#]*)(.*)", re.DOTALL)


def is_url(value: str) -> bool:
    """Whether `value` is a URL (`scheme://...`): never a path relative to a folder."""
    return _URL.fullmatch(value) is not None


def shown_url(value: str) -> str:
    """`value` as a message may show it: a URL without its credentials, query or fragment
    (`s3://…@bucket/x?…`: the marks say something was left out, never what)."""
    m = _URL.fullmatch(value)
    if m is None:
        return value
    scheme, netloc, path, rest = m.groups()
    who = "…@" if "@" in netloc else ""
    return f"{scheme}://{who}{netloc.rsplit('@', 1)[-1]}{path}{'?…' if rest else ''}"


def url_problem(value: str) -> str | None:
    """Why a URL may not name a location (credentials, a query, a fragment); None if it may.

    Credentials belong to the provider's credential chain and a query can sign a request:
    either would travel into the recipe hash, the manifest and every message that names it.
    """
    m = _URL.fullmatch(value)
    if m is None:
        return None
    if "@" in m.group(2):
        return (
            "credentials inside a storage URL are refused; use the provider's standard "
            "credential chain (environment variables, config files, instance metadata)"
        )
    if m.group(4):
        return "query strings and fragments are not supported in a location (not shown)"
    return None


Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=64)]

# Input bounds, checked before any work so a hostile or mistyped recipe fails with a message
# instead of exhausting memory. A recipe file may be at most MAX_RECIPE_BYTES; its YAML may
# use anchors and aliases, but the document they expand to may hold at most MAX_YAML_NODES
# nodes (counted on the parsed graph, without expanding it) nested at most MAX_YAML_DEPTH deep;
# a recursive alias is refused. Sample counts are bounded per class and in total: planning
# streams shard by shard, so the bound guards runaway typos, not planner memory.
MAX_RECIPE_BYTES = 1024 * 1024
MAX_YAML_NODES = 1_000_000
MAX_YAML_DEPTH = 64
MAX_COUNT_PER_CLASS = 100_000_000
MAX_PLANNED_SAMPLES = 1_000_000_000

# Sampler names a recipe may give, each with the kind of model it is for: `diffusion`
# (epsilon / v-prediction: SD 1.x/2.x, SDXL) or `flow` (flow matching: SD3, Flux, Sana).
# `native` keeps the model folder's own scheduler. The diffusers classes behind the names
# live in synthgen.generators; this table is the one list of names.
SCHEDULERS: dict[str, str] = {
    "native": "any",
    "ddpm": "diffusion",
    "ddim": "diffusion",
    "dpm-solver++": "diffusion",
    "euler": "diffusion",
    "euler-ancestral": "diffusion",
    "unipc": "diffusion",
    "flow-match-euler": "flow",
    "flow-match-heun": "flow",
}


def utf8_problem(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (a lone surrogate, say), or None if it can.

    Tokenizers, Parquet and the tar `.txt` member all need UTF-8; a string that cannot be
    encoded would fail only after the model has loaded.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"not valid UTF-8 text: {text[exc.start : exc.end]!r} at position {exc.start} "
            "(a lone surrogate?)"
        )
    return None


class RecipeError(ValueError):
    """A recipe could not be read or is invalid; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class ModelSpec(_Frozen):
    """A local diffusers pipeline folder (safetensors weights, standard pipeline class)."""

    path: str = Field(min_length=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")
    compute_batch: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="images per pipeline call; fixed-shape, so part of what the bytes depend on",
    )
    accelerator: str | None = Field(
        default=None,
        description="Beam resource hint for the model steps, e.g. "
        "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow GPU workers)",
    )
    channels_last: bool = Field(default=False, description="UNet/VAE in channels_last (GPU)")
    compile: bool = Field(default=False, description="torch.compile the UNet (GPU)")
    copies: int = Field(
        default=1,
        ge=1,
        le=64,
        description="model copies in each worker process, all on its device; the process's "
        "threads take turns on them, one call at a time per copy",
    )
    cpu_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="torch threads per worker on CPU; float rounding depends on it",
    )
    variant: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        description="weight variant files to load, e.g. 'fp16' for *.fp16.safetensors",
    )
    offload: Literal["none", "model", "sequential"] = Field(
        default="none", description="diffusers CPU offload (GPU memory saver)"
    )
    vae_slicing: bool = Field(default=False, description="decode the batch one image at a time")
    vae_tiling: bool = Field(default=False, description="decode large images in tiles")
    safety_checker: bool = Field(
        default=True,
        description="run the folder's own safety checker (when it has one) as a scorer",
    )
    license: str | None = Field(
        default=None,
        max_length=200,
        description="the model's licence when its folder has no model card (README.md) saying it",
    )
    license_ack: str | None = Field(
        default=None,
        max_length=200,
        description="the licence of the model card you have read and accept; a card declaring "
        "another licence fails the build before anything is generated",
    )


class GuidanceJitter(_Frozen):
    """Per-sample guidance scale: one of `levels` evenly spaced values from `low` to `high`.

    Drawn per sample from (recipe seed, key). Images sharing a value share fixed-shape model
    calls, so a few levels keep those calls full."""

    low: float = Field(ge=0.0, le=50.0)
    high: float = Field(ge=0.0, le=50.0)
    levels: int = Field(default=5, ge=2, le=101)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError("give [low, high] or {low, high, levels}")
            return {"low": v[0], "high": v[1]}
        return v

    @model_validator(mode="after")
    def _ordered(self) -> GuidanceJitter:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def values(self) -> list[float]:
        step = (self.high - self.low) / (self.levels - 1)
        return [round(self.low + i * step, 6) for i in range(self.levels)]


class AdapterSpec(_Frozen):
    """A LoRA or a textual-inversion embedding (a `.safetensors` file) on top of the model."""

    kind: Literal["lora", "textual_inversion"] = "lora"
    path: str = Field(min_length=1, description="a .safetensors file")
    scale: float = Field(default=1.0, ge=-10.0, le=10.0, description="LoRA weight")
    token: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="textual inversion: the token prompts use; null: the file's one token",
    )

    @field_validator("path")
    @classmethod
    def _safetensors_only(cls, v: str) -> str:
        if not v.endswith(".safetensors"):
            raise ValueError(f"{v}: adapters are loaded from .safetensors files only")
        return v

    @model_validator(mode="after")
    def _fields_of_kind(self) -> AdapterSpec:
        if self.kind == "lora" and self.token is not None:
            raise ValueError(f"{self.path}: `token` is for textual_inversion adapters")
        if self.kind == "textual_inversion" and self.scale != 1.0:
            raise ValueError(f"{self.path}: `scale` is for lora adapters")
        return self


SlotValues = Annotated[list[Annotated[str, Field(max_length=1000)]], Field(min_length=1)]


class SamplingSpec(_Frozen):
    scheduler: str = Field(
        default="native",
        description="`native` (the model folder's own) or a sampler of the model's family: "
        + ", ".join(n for n in SCHEDULERS if n != "native"),
    )
    steps: int = Field(default=20, ge=1, le=1000, description="denoising steps per image")
    guidance_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=50.0,
        description="classifier-free guidance scale (<= 1: no guidance; a guidance-distilled "
        "family reads it as its guidance embedding)",
    )
    height: int = Field(default=512, ge=8, le=4096)
    width: int = Field(default=512, ge=8, le=4096)
    negative_prompt: str = ""
    max_sequence_length: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="T5 prompt length (SD3, Flux, PixArt); null keeps the pipeline's default",
    )
    guidance_jitter: GuidanceJitter | None = Field(
        default=None,
        description="per-sample guidance drawn from `levels` evenly spaced values in "
        "[low, high] (or `[low, high]`); a class's own guidance_scale is not jittered",
    )

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; choose one of {', '.join(SCHEDULERS)}")
        return v

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8, got {v}")
        return v


class ClassSpec(_Frozen):
    id: int = Field(ge=0)
    name: Slug
    prompts: list[str] = Field(min_length=1)
    slots: dict[str, SlotValues] = Field(
        default_factory=dict,
        description="values of this class's prompt `{slot}`s (before the recipe's `slots`)",
    )
    negative_prompt: str | None = Field(
        default=None, description="this class's negative prompt (null: sampling's)"
    )
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=50.0, description="this class's guidance (null: sampling's)"
    )
    steps: int | None = Field(
        default=None, ge=1, le=1000, description="this class's steps (null: sampling's)"
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list, max_length=16, description="LoRAs / embeddings for this class only"
    )

    @field_validator("prompts")
    @classmethod
    def _non_empty_prompts(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for i, p in enumerate(v):
            if not p.strip():
                raise ValueError("prompt templates must not be empty")
            problem = utf8_problem(p)
            if problem:
                name = info.data.get("name", "?")
                raise ValueError(f"class {name!r}, prompt {i} ({p!r}): {problem}")
        return v


class ScorerSpec(_Frozen):
    """One scorer plug-in by name; `options` are checked by the scorer itself."""

    name: Slug
    options: dict[str, Any] = Field(default_factory=dict)


class ScoringSpec(_Frozen):
    """Scorers that add columns to every sample. CLIP-based ones share `clip_model`."""

    clip_model: str = Field(
        min_length=1, description="folder holding <name>.json + <name>.safetensors"
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="fixed compute batch of the model scorers (hashed); default: the recipe's "
        "`batch_size`, so a scoring call pads nothing",
    )
    scorers: list[ScorerSpec] = Field(
        default_factory=lambda: [ScorerSpec(name="clip"), ScorerSpec(name="image_stats")],
        min_length=1,
        description="scorer plug-ins in order; each writes the columns it declares",
    )

    @field_validator("scorers")
    @classmethod
    def _unique_scorers(cls, v: list[ScorerSpec]) -> list[ScorerSpec]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scorer listed twice: {', '.join(dupes)}")
        return v


class Threshold(_Frozen):
    """Exactly one of: an absolute value, a per-class quantile, or a per-class kept fraction.

    `quantile: q` rejects each class's worst q of samples by the score: the lowest, or the
    highest for a check that keeps low scores (`light`, `keep: below`); `kept_fraction: f`
    keeps each class's best f (the same as `quantile: 1 - f`).
    """

    absolute: float | None = None
    quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    kept_fraction: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Threshold:
        given = [v is not None for v in (self.absolute, self.quantile, self.kept_fraction)]
        if sum(given) != 1:
            raise ValueError("give exactly one of absolute, quantile, kept_fraction")
        return self

    @property
    def per_class_quantile(self) -> float | None:
        if self.quantile is not None:
            return self.quantile
        if self.kept_fraction is not None:
            return 1.0 - self.kept_fraction
        return None


class ColumnThreshold(Threshold):
    """A threshold on any score column a scorer declares; `keep` says which side passes."""

    keep: Literal["above", "below"] = "above"


class NearDuplicateSpec(_Frozen):
    max_distance: int = Field(
        default=2, ge=0, le=15, description="perceptual-hash Hamming distance"
    )


class NearCopySpec(_Frozen):
    """A sample this close to a reference (or eval-set) image is rejected: its embedding's
    cosine similarity to the nearest image at least `min_similarity`, or that image's
    perceptual hash within `max_phash_distance` bits (null: not compared)."""

    min_similarity: float = Field(default=0.95, ge=-1.0, le=1.0)
    max_phash_distance: int | None = Field(default=None, ge=0, le=64)


class SemanticDuplicateSpec(_Frozen):
    """Within the build: of samples of one class whose embeddings' cosine similarity is at
    least `min_similarity`, the smallest key is kept (SemDeDup-style, per class)."""

    min_similarity: float = Field(default=0.98, ge=-1.0, le=1.0)


class ChecksSpec(_Frozen):
    """Per-image checks; `null` disables one. Names follow cleanvision's vocabulary."""

    clip_score: Threshold | None = Threshold(absolute=0.0)
    label_margin: Threshold | None = None
    blurry: Threshold | None = None
    dark: Threshold | None = None
    light: Threshold | None = None
    low_information: Threshold | None = None
    unsafe: Threshold | None = Field(
        default=Threshold(absolute=0.0),
        description="`safety_concepts`: best concept similarity minus its threshold above "
        "this -> rejected and withheld (never written)",
    )
    nsfw: Threshold | None = Field(
        default=Threshold(absolute=0.0),
        description="`safety_checker` (the model folder's own): its concept score above this "
        "-> rejected and withheld",
    )
    odd_size: bool = True
    exact_duplicate: bool = True
    near_duplicate: NearDuplicateSpec | None = None
    near_copy: NearCopySpec | None = Field(
        default=None, description="reject near-copies of a `reference` image (memorization)"
    )
    contaminated: NearCopySpec | None = Field(
        default=None, description="reject near-copies of an `eval_set` image (contamination)"
    )
    semantic_duplicate: SemanticDuplicateSpec | None = None
    scores: dict[str, ColumnThreshold] = Field(
        default_factory=dict,
        description="thresholds on score columns by column name (any scorer's column)",
    )

    @model_validator(mode="after")
    def _light_is_absolute(self) -> ChecksSpec:
        if self.light is not None and self.light.absolute is None:
            raise ValueError("light: only an absolute threshold is supported")
        return self


class SafetyConcept(_Frozen):
    """One concept prompt screened for; its family names the score column it feeds."""

    family: Slug
    prompt: str = Field(min_length=1, max_length=300)
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="cosine similarity above which an image shows the concept; null: the "
        "family's entry in `thresholds`, else `threshold`",
    )


# A starting list in the spirit of Stable Diffusion's own checker (whose concepts are kept as
# embeddings): calibrate the thresholds on the recipe's CLIP model before relying on them.
DEFAULT_SAFETY_CONCEPTS: tuple[SafetyConcept, ...] = tuple(
    SafetyConcept(family=family, prompt=prompt)
    for family, prompts in (
        ("sexual", ("sexual content", "nudity", "pornography", "a naked person")),
        ("violence", ("graphic violence", "gore", "blood and injuries", "a dead body")),
        ("hate", ("a hate symbol", "a swastika")),
        ("self_harm", ("self-harm", "a person cutting themselves")),
    )
    for prompt in prompts
)


class SafetySpec(_Frozen):
    """Content screening: concept prompts for the `safety_concepts` scorer, prompt blocklist.

    A prompt (class prompt) containing a `blocklist` entry (case-insensitive, as whole words)
    is refused when the recipe is read, before anything is generated.
    """

    concepts: list[SafetyConcept] = Field(
        default_factory=lambda: list(DEFAULT_SAFETY_CONCEPTS), max_length=1000
    )
    threshold: float = Field(
        default=0.3, ge=-1.0, le=1.0, description="default cosine similarity threshold"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="threshold per concept family (overrides `threshold`)"
    )
    blocklist: list[str] = Field(default_factory=list, max_length=10_000)

    @field_validator("blocklist")
    @classmethod
    def _non_empty_terms(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("blocklist entries must not be empty")
        return v

    @model_validator(mode="after")
    def _known_families(self) -> SafetySpec:
        families = {c.family for c in self.concepts}
        unknown = sorted(set(self.thresholds) - families)
        if unknown:
            raise ValueError(f"thresholds: no concept of family {', '.join(unknown)}")
        if any(not -1.0 <= t <= 1.0 for t in self.thresholds.values()):
            raise ValueError("thresholds: cosine similarities lie in [-1, 1]")
        return self

    def concept_threshold(self, concept: SafetyConcept) -> float:
        if concept.threshold is not None:
            return concept.threshold
        return self.thresholds.get(concept.family, self.threshold)


def blocklist_match(text: str, blocklist: list[str]) -> str | None:
    """The first blocklist entry found in `text` (case-insensitive, whole words), or None."""
    for term in blocklist:
        if re.search(rf"(?<!\w){re.escape(term.strip())}(?!\w)", text, re.IGNORECASE):
            return term
    return None


# Distribution metrics a recipe may gate (validators.metrics computes them).
METRIC_NAMES = (
    "frechet_distance",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "vendi",
    "vendi_reference",
    "mean_pairwise_distance",
    "mean_pairwise_distance_reference",
)


class MetricGate(_Frozen):
    """Bounds (inclusive) one corpus metric must meet, overall and in every class."""

    min: float | None = None
    max: float | None = None
    per_class: bool = Field(default=True, description="also gate each class, not only overall")

    @model_validator(mode="after")
    def _some_bound(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class ValidationSpec(_Frozen):
    """Corpus expectations run after writing (great_expectations)."""

    min_accepted_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    max_failed_fraction: float = Field(
        default=0.001,
        ge=0.0,
        le=1.0,
        description="budget for failed samples (an exception while generating, scoring or "
        "encoding one sample: `status=failed`): past this fraction of attempted samples the "
        "build fails validation",
    )
    metrics: dict[str, MetricGate] = Field(
        default_factory=dict,
        description="gates on distribution metrics against the reference set, by name: "
        + ", ".join(METRIC_NAMES),
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: dict[str, MetricGate]) -> dict[str, MetricGate]:
        unknown = sorted(set(v) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(
                f"unknown metric {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}"
            )
        return v


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class C2paSpec(_Frozen):
    """C2PA content credentials on every accepted image, signed with this certificate.

    The chain (PEM: the signing certificate first, then its intermediates) and the private
    key (PEM, unencrypted PKCS#8) are each named by a file path or by the *name* of an
    environment variable holding the PEM text; the key never enters the recipe, the
    manifest, provenance or logs.
    """

    cert_chain: str | None = Field(default=None, description="PEM certificate chain file")
    cert_chain_env: EnvName | None = Field(
        default=None, description="name of an environment variable holding the chain"
    )
    key: str | None = Field(default=None, description="PEM private key file")
    key_env: EnvName | None = Field(
        default=None, description="name of an environment variable holding the private key"
    )
    alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    timestamp_url: str | None = Field(
        default=None, description="RFC 3161 time-stamp authority (none: no time stamp)"
    )

    @model_validator(mode="after")
    def _one_source_each(self) -> C2paSpec:
        for what, path, env in (
            ("cert_chain", self.cert_chain, self.cert_chain_env),
            ("key", self.key, self.key_env),
        ):
            if (path is None) == (env is None):
                raise ValueError(f"c2pa: give exactly one of {what} or {what}_env")
        return self


class OutputSpec(_Frozen):
    shard_size: int = Field(
        default=1000, ge=1, description="samples per shard: the unit of output, memory and resume"
    )
    image_format: Literal["png", "webp", "jpeg"] = "png"
    png_compress_level: int = Field(default=1, ge=0, le=9)
    quality: int = Field(default=95, ge=1, le=100, description="webp/jpeg quality")
    c2pa: C2paSpec | None = Field(
        default=None, description="sign accepted images with C2PA content credentials"
    )


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


# How balancing conditions its top-ups; one name per way (extend the Literal to add one).
BalanceConditioning = Literal["text", "img2img", "lora"]
# The per-sample modes a mix of top-ups may combine (`lora` applies to a whole class).
BalanceMixMode = Literal["text", "img2img"]
BALANCE_IMG2IMG_STRENGTH = 0.6


class BalanceSpec(_Frozen):
    """Top up the classes of an existing labelled dataset to a target count after filtering."""

    source: str = Field(min_length=1, description="Parquet, WebDataset shards, or image folder")
    format: Literal["auto", "parquet", "webdataset", "folder"] = "auto"
    label_column: str = "label"
    image_column: str = "image"
    label_type: Literal["auto", "name", "id"] = Field(
        default="auto",
        description="how source labels are read: as class names, as class ids, or `auto` "
        "(either; a label that names one class and is the id of another is refused)",
    )
    target: Literal["max"] | int | dict[str, int] = Field(
        default="max",
        description="accepted images per class after balancing: `max` (the largest class's "
        "count), a number, or per class name",
    )
    max_rounds: int = Field(default=4, ge=1, le=20)
    overgenerate: float = Field(
        default=1.1, ge=1.0, le=10.0, description="margin on top of the measured accept rate"
    )
    min_accept_rate: float = Field(
        default=0.02, gt=0.0, le=1.0, description="a class accepting less cannot be filled"
    )
    conditioning: BalanceConditioning | dict[BalanceMixMode, float] = Field(
        default="text",
        description="how top-ups are conditioned: `text` (the class prompts), `img2img` (each "
        "top-up starts from one of its class's real images, `strength`), `lora` (the class "
        "prompts through a LoRA trained per class on its real images: `adapt: lora`), or a "
        "mix `{text: w, img2img: w}` (or a list of modes, equal shares): each top-up's mode "
        "drawn from (seed, key) with these weights",
    )
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="conditioning img2img: how far a top-up moves from its real image (null: 0.6)",
    )
    adapt: Literal["none", "lora"] = Field(
        default="none",
        description="`lora`: before a class's top-up, train a small LoRA on that class's real "
        "images (settings in `lora`), save it under adapters/, generate with it",
    )
    lora: LoraTrainSpec | None = Field(
        default=None, description="per-class LoRA training settings (null: the defaults)"
    )

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


class ReferenceSpec(_Frozen):
    """A labelled image set the corpus is measured against (read like a balance source)."""

    source: str = Field(min_length=1, description="Parquet, WebDataset shards, or image folder")
    format: Literal["auto", "parquet", "webdataset", "folder"] = "auto"
    label_column: str = "label"
    image_column: str = "image"
    label_type: Literal["auto", "name", "id"] = "auto"
    max_images: int = Field(
        default=100_000, ge=1, le=10_000_000, description="read at most this many images"
    )


# Conditioning modes a recipe may use; `text` is plain text-to-image. The diffusers pipelines
# behind the image modes are derived from the loaded model (synthgen.generators.conditioning).
ConditioningMode = Literal["text", "img2img", "inpaint", "controlnet", "ip_adapter"]
# Named conditioning-image preprocessors (synthgen.generators.preprocessors).
PREPROCESSORS = ("identity", "canny")


class ConditioningSourceSpec(_Frozen):
    """Labelled images (read like a balance source) that condition the samples of their class.

    Which image a sample uses is a pure function of (recipe seed, key)."""

    path: str = Field(min_length=1, description="Parquet, WebDataset shards, or image folder")
    format: Literal["auto", "parquet", "webdataset", "folder"] = "auto"
    label_column: str = "label"
    image_column: str = "image"
    label_type: Literal["auto", "name", "id"] = "auto"
    mask_column: str | None = Field(
        default=None,
        min_length=1,
        description="inpaint: each image's own mask (white: repainted), read beside it: the "
        "Parquet column, or the WebDataset member extension (`mask.png` for `<key>.mask.png`)",
    )
    mask_folder: str | None = Field(
        default=None,
        min_length=1,
        description="inpaint, folder sources: a folder of masks mirroring the source folder "
        "(`<class>/<name>.<any image extension>` for the image `<class>/<name>.<ext>`)",
    )

    @model_validator(mode="after")
    def _one_kind_of_masks(self) -> ConditioningSourceSpec:
        if self.mask_column is not None and self.mask_folder is not None:
            raise ValueError(
                "give mask_column (Parquet, WebDataset) or mask_folder (folder), not both"
            )
        return self

    @property
    def has_masks(self) -> bool:
        return self.mask_column is not None or self.mask_folder is not None


class PreprocessorSpec(_Frozen):
    """How a ControlNet's conditioning image is derived from the sample's source image."""

    name: str = Field(default="identity", description="one of: " + ", ".join(PREPROCESSORS))
    low_threshold: int = Field(default=100, ge=0, le=1000, description="canny: lower threshold")
    high_threshold: int = Field(default=200, ge=0, le=1000, description="canny: upper threshold")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PREPROCESSORS:
            choices = ", ".join(PREPROCESSORS)
            raise ValueError(f"unknown preprocessor {v!r}; choose one of {choices}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> PreprocessorSpec:
        if self.low_threshold > self.high_threshold:
            raise ValueError("low_threshold must not exceed high_threshold")
        return self


class ControlNetSpec(_Frozen):
    """One ControlNet folder (diffusers `ControlNetModel`, safetensors) and its image."""

    path: str = Field(min_length=1, description="a diffusers ControlNetModel folder")
    conditioning_scale: float = Field(
        default=1.0, ge=0.0, le=10.0, description="weight of this ControlNet's residuals"
    )
    image: str | None = Field(
        default=None,
        description="one conditioning image for every sample; null: derived from the "
        "sample's source image by `preprocessor`",
    )
    preprocessor: PreprocessorSpec = PreprocessorSpec()


class IPAdapterSpec(_Frozen):
    """An IP-Adapter folder: `ip_adapter.safetensors` (`image_proj.*` and `ip_adapter.*`
    tensors) and `image_encoder/` (a CLIPVisionModelWithProjection, safetensors)."""

    path: str = Field(min_length=1, description="the IP-Adapter folder")
    scale: float = Field(default=1.0, ge=0.0, le=10.0, description="weight of the image prompt")
    image: str | None = Field(
        default=None,
        description="one image prompt for every sample (of the class, under `per_class`); "
        "null: each sample's own source image",
    )


class ConditioningSpec(_Frozen):
    """How samples are conditioned beyond their prompt (see docs/conditioning.md)."""

    mode: ConditioningMode = Field(
        default="text",
        description="`text` (prompt only), `img2img`, `inpaint`, `controlnet` or `ip_adapter`",
    )
    source: ConditioningSourceSpec | None = Field(
        default=None,
        description="the images img2img / inpaint start from, or ControlNet derives from",
    )
    strength: float = Field(
        default=0.75, gt=0.0, le=1.0, description="img2img / inpaint: how far from the image"
    )
    mask: str | None = Field(
        default=None,
        description="inpaint: one mask image (white: repainted) of exactly the sampling size; "
        "per-sample masks come with the source instead (`source.mask_column` / `mask_folder`)",
    )
    resize: Literal["center_crop", "stretch", "pad"] = Field(
        default="center_crop",
        description="how a source image is fitted to the sampling size: scale the short side "
        "and crop the centre, stretch, or scale the long side and pad with black",
    )
    controlnets: list[ControlNetSpec] = Field(
        default_factory=list, max_length=8, description="controlnet: one or more ControlNets"
    )
    ip_adapter: IPAdapterSpec | None = Field(
        default=None,
        description="ip_adapter: the adapter; the image prompt is the sample's source image, or "
        "`ip_adapter.image`",
    )
    per_class: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fields overridden for one class, by class name (e.g. `{three: {mode: text}}`)",
    )

    @model_validator(mode="after")
    def _fields_of_mode(self) -> ConditioningSpec:
        mode = self.mode
        if mode in ("img2img", "inpaint") and self.source is None:
            raise ValueError(f"mode {mode}: needs a `source` of images")
        source_masks = self.source is not None and self.source.has_masks
        if mode == "inpaint" and self.mask is None and not source_masks:
            raise ValueError(
                "mode inpaint: needs a `mask` image, or per-sample masks from the source "
                "(`source.mask_column` or `source.mask_folder`)"
            )
        if mode == "inpaint" and self.mask is not None and source_masks:
            raise ValueError(
                "mode inpaint: give one `mask` for every sample or per-sample masks from the "
                "source, not both"
            )
        if mode != "inpaint" and self.mask is not None:
            raise ValueError(f"mask: only for mode inpaint (mode is {mode})")
        if mode != "inpaint" and source_masks:
            raise ValueError(
                f"source.mask_column / mask_folder: only for mode inpaint (mode is {mode})"
            )
        if mode == "controlnet":
            if not self.controlnets:
                raise ValueError("mode controlnet: give at least one entry in `controlnets`")
            if self.source is None and any(c.image is None for c in self.controlnets):
                raise ValueError(
                    "mode controlnet: a ControlNet without a fixed `image` derives its image "
                    "from a `source`; give one"
                )
        elif self.controlnets:
            raise ValueError(f"controlnets: only for mode controlnet (mode is {mode})")
        if mode == "ip_adapter" and (
            self.ip_adapter is None
            or (self.source is None and self.ip_adapter.image is None and not self.per_class)
        ):
            raise ValueError(
                "mode ip_adapter: needs an `ip_adapter` and image prompts: a `source` of "
                "images, or one `ip_adapter.image`"
            )
        if mode != "ip_adapter" and self.ip_adapter is not None:
            raise ValueError(f"ip_adapter: only for mode ip_adapter (mode is {mode})")
        for name, override in self.per_class.items():
            # the adapter changes the model's attention: every class uses it, or none; a
            # class may change its image prompt and scale, not the adapter
            own = override.get("ip_adapter")
            other_adapter = own is not None and (
                self.ip_adapter is None
                or not isinstance(own, dict)
                or own.get("path", self.ip_adapter.path) != self.ip_adapter.path
            )
            if (mode == "ip_adapter") != (
                override.get("mode", mode) == "ip_adapter"
            ) or other_adapter:
                raise ValueError(
                    f"per_class.{name}: mode ip_adapter and its adapter apply to every class "
                    "or none (a class may change the adapter's `image` and `scale`, not its "
                    "`path`)"
                )
        for name, override in self.per_class.items():
            if "per_class" in override:
                raise ValueError(f"per_class.{name}: overrides cannot nest `per_class`")
            try:
                self.for_class(name)
            except ValidationError as exc:
                msgs = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                    for e in exc.errors()
                )
                raise ValueError(f"per_class.{name}: {msgs}") from None
        return self

    def for_class(self, class_name: str) -> ConditioningSpec:
        """The spec a class uses: this one with the class's `per_class` fields applied."""
        override = self.per_class.get(class_name)
        if not override:
            return self
        if override.get("mode") == "text":
            return ConditioningSpec.model_validate(override)
        base = self.model_dump(exclude={"per_class"})
        merged = {**base, **override}
        if isinstance(base.get("ip_adapter"), dict) and isinstance(
            override.get("ip_adapter"), dict
        ):
            merged["ip_adapter"] = {**base["ip_adapter"], **override["ip_adapter"]}
        return ConditioningSpec.model_validate(merged)


class Recipe(_Frozen):
    """A build recipe. Relative paths resolve against the recipe file's folder."""

    name: Slug = Field(description="the corpus's name: in every key and in the manifest")
    seed: int = Field(
        default=0, ge=0, lt=2**63, description="every sample's seed derives from it and its key"
    )
    model: ModelSpec
    sampling: SamplingSpec = SamplingSpec()
    classes: list[ClassSpec] = Field(min_length=1)
    count_per_class: int | None = Field(default=None, ge=1, le=MAX_COUNT_PER_CLASS)
    scoring: ScoringSpec
    checks: ChecksSpec = ChecksSpec()
    validation: ValidationSpec = ValidationSpec()
    balance: BalanceSpec | None = None
    reference: ReferenceSpec | None = Field(
        default=None,
        description="real images to measure against (metrics, near copies); in a balancing "
        "build the balance source is the default",
    )
    eval_set: ReferenceSpec | None = Field(
        default=None, description="evaluation images no sample may copy (contamination)"
    )
    conditioning: ConditioningSpec | None = Field(
        default=None,
        description="image conditioning (img2img, inpaint, ControlNet); null: text only",
    )
    output: OutputSpec = OutputSpec()
    safety: SafetySpec = SafetySpec()
    usage: str | None = Field(
        default=None,
        max_length=10_000,
        description="what the corpus may be used for; recorded in the manifest and the report",
    )
    batch_size: int = Field(default=8, ge=1, le=4096)
    slots: dict[str, SlotValues] = Field(
        default_factory=dict,
        description="values of the prompt templates' `{slot}`s, by slot name (a class's own "
        "`slots` come first); one value per sample, chosen from (seed, key)",
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        max_length=16,
        description="LoRAs (weight `scale`) and textual-inversion embeddings, every class",
    )

    @field_validator("slots")
    @classmethod
    def _slot_names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in v:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name == "class":
                raise ValueError(
                    f"slot {name!r}: a slot name is lower-case letters, digits and _ "
                    "(`class` is the class name)"
                )
        return v

    @model_validator(mode="after")
    def _count_or_balance(self) -> Recipe:
        if self.count_per_class is None and self.balance is None:
            raise ValueError("count_per_class: required unless the recipe has a balance block")
        return self

    @model_validator(mode="after")
    def _conditioning_classes(self) -> Recipe:
        names = {c.name for c in self.classes}
        if self.conditioning is not None:
            unknown = sorted(set(self.conditioning.per_class) - names)
            if unknown:
                raise ValueError(
                    f"conditioning.per_class: {', '.join(unknown)} is not one of the classes"
                )
            for c in self.classes:
                spec = self.conditioning.for_class(c.name)
                if (
                    spec.mode == "ip_adapter"
                    and spec.source is None
                    and (spec.ip_adapter is None or spec.ip_adapter.image is None)
                ):
                    raise ValueError(
                        f"conditioning: class {c.name!r} has no image prompt: give a `source` "
                        "of images or an `ip_adapter.image` (for it, under `per_class`)"
                    )
        balance = self.balance
        if balance is not None and balance.uses_img2img:
            if self.conditioning is not None:
                raise ValueError(
                    "balance.conditioning img2img conditions top-ups on the balance source; "
                    "remove the `conditioning` block (or use balance.conditioning: text)"
                )
        elif balance is not None and balance.strength is not None:
            raise ValueError("balance.strength: only for balance.conditioning img2img")
        return self

    @model_validator(mode="after")
    def _reference_for_its_checks(self) -> Recipe:
        has_reference = self.reference is not None or self.balance is not None
        if self.checks.near_copy is not None and not has_reference:
            raise ValueError("checks.near_copy: needs a `reference` (or `balance`) block")
        if self.checks.contaminated is not None and self.eval_set is None:
            raise ValueError("checks.contaminated: needs an `eval_set` block")
        if self.validation.metrics and not has_reference:
            raise ValueError("validation.metrics: needs a `reference` (or `balance`) block")
        return self

    @model_validator(mode="after")
    def _unique_classes(self) -> Recipe:
        ids = Counter(str(c.id) for c in self.classes)
        names = Counter(c.name for c in self.classes)
        for what, seen in (("id", ids), ("name", names)):
            dupes = sorted(v for v, n in seen.items() if n > 1)
            if dupes:
                raise ValueError(f"classes: duplicate class {what}: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _bounded_total(self) -> Recipe:
        if self.count_per_class is not None:
            total = self.count_per_class * len(self.classes)
            if total > MAX_PLANNED_SAMPLES:
                raise ValueError(
                    f"count_per_class: {self.count_per_class} x {len(self.classes)} classes = "
                    f"{total} planned samples, over the maximum of {MAX_PLANNED_SAMPLES}"
                )
        return self

    @model_validator(mode="after")
    def _no_blocked_prompt(self) -> Recipe:
        """Every prompt a template can expand to is checked (and every template resolves)."""
        blocklist = self.safety.blocklist
        budget = MAX_CHECKED_EXPANSIONS
        for c in self.classes:
            for prompt in c.prompts:
                try:
                    choices = slot_values(prompt, c.name, c.slots, self.slots)
                except KeyError as exc:
                    raise ValueError(
                        f"classes: class {c.name!r}, prompt {prompt!r}: slot {{{exc.args[0]}}} "
                        "has no values (give them in the class's or the recipe's `slots`)"
                    ) from None
                if not blocklist:
                    continue
                budget -= count_expansions(choices)
                if budget < 0:
                    raise ValueError(
                        f"classes: class {c.name!r}, prompt {prompt!r}: the templates expand to "
                        f"more than {MAX_CHECKED_EXPANSIONS} prompts, too many to check against "
                        "safety.blocklist; use fewer slot values"
                    )
                for expanded in iter_expansions(prompt, choices):
                    term = blocklist_match(expanded, blocklist)
                    if term is not None:
                        shown = expanded if expanded == prompt else f"{expanded} (from {prompt})"
                        raise ValueError(
                            f"classes: class {c.name!r}, prompt {shown!r} matches "
                            f"safety.blocklist entry {term!r}; it is refused before generation"
                        )
        return self

    @model_validator(mode="after")
    def _unique_adapters(self) -> Recipe:
        for c in self.classes:
            paths = [a.path for a in (*self.adapters, *c.adapters)]
            dupes = sorted({p for p in paths if paths.count(p) > 1})
            if dupes:
                raise ValueError(f"classes: class {c.name!r}: adapter listed twice: {dupes[0]}")
        return self

    @model_validator(mode="after")
    def _every_string_checked(self) -> Recipe:
        # One walk over every string of the recipe (dict keys included). Each must be UTF-8
        # text (prompts are checked per class, naming it; this catches the rest, the negative
        # prompt included, before a tokenizer or writer meets it). A value that is a URL (a
        # source, a model path) must carry no credentials or query: refused without echoing
        # it, before it is hashed, written into a manifest or named in a message.
        stack: list[tuple[str, Any, bool]] = [("", self.model_dump(), False)]
        while stack:
            where, value, is_key = stack.pop()
            if isinstance(value, str):
                problem = utf8_problem(value)
                if problem:
                    raise ValueError(f"{where}: {problem}")
                problem = None if is_key else url_problem(value)
                if problem:
                    raise ValueError(f"{where}: {shown_url(value)}: {problem}")
            elif isinstance(value, dict):
                stack += [(f"{where}.{k}".lstrip("."), v, False) for k, v in value.items()]
                stack += [(f"{where} key", k, True) for k in value if isinstance(k, str)]
            elif isinstance(value, list | tuple):
                stack += [(f"{where}.{i}", v, False) for i, v in enumerate(value)]
        return self

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of every field that affects the corpus.

        `batch_size` (Beam batching) is left out: it changes how work is grouped, never what
        is made. `model.compute_batch` and `scoring.batch_size` are in: they fix the shape
        of every model call, and float rounding depends on that shape.
        """
        data = self.model_dump(mode="json")
        data.pop("batch_size")
        # the scorers' compute shape, however it was given (by default the Beam batch)
        data["scoring"]["batch_size"] = self.scoring_batch
        # Optional blocks added later leave the hash of a recipe that does not use them as it
        # was, so existing builds still resume and extend.
        for block, name in _UNSET_IF_EMPTY:
            parent = data if block is None else data.get(block) or {}
            if name in parent and not parent[name]:
                parent.pop(name)
        for block, name, default in _UNSET_IF_DEFAULT:
            parent = data if block is None else data.get(block) or {}
            if parent.get(name, default) == default:
                parent.pop(name, None)
        for *path, name in _NESTED_UNSET_IF_EMPTY:
            node: Any = data
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and name in node and not node[name]:
                node.pop(name)
        for c in data["classes"]:
            for name in _CLASS_UNSET_IF_EMPTY:
                if name in c and c[name] in (None, [], {}):
                    c.pop(name)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def scoring_batch(self) -> int:
        """The model scorers' fixed compute batch: `scoring.batch_size`, else `batch_size`."""
        return self.scoring.batch_size or self.batch_size

    @cached_property
    def classes_by_id(self) -> dict[int, ClassSpec]:
        """Class id -> class, built once per recipe (lookups stay O(1) with many classes)."""
        return {c.id: c for c in self.classes}

    def class_by_id(self, class_id: int) -> ClassSpec:
        return self.classes_by_id[class_id]


# -- loading ------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_yaml_budget(
    root: yaml.Node, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH
) -> int:
    """The number of nodes `root` expands to, counting each alias use in full; refuse more
    than `max_nodes`, nesting deeper than `max_depth`, and recursive aliases.

    Aliases share one parsed node, so the count is memoised per node: an alias bomb costs
    its parsed size here, not its expanded size.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, finished = stack.pop()
        nid = id(node)
        if finished:
            open_nodes.discard(nid)
            size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > max_nodes:
                raise yaml.YAMLError(
                    f"the document expands to more than {max_nodes} YAML nodes "
                    f"(anchors and aliases counted in full), near {node.start_mark}"
                )
            sizes[nid] = size
            continue
        if nid in sizes:
            continue
        if nid in open_nodes:
            raise yaml.YAMLError(f"recursive alias, near {node.start_mark}")
        if depth > max_depth:
            raise yaml.YAMLError(f"nested deeper than {max_depth} levels, near {node.start_mark}")
        open_nodes.add(nid)
        stack.append((node, depth, True))
        stack += [(c, depth + 1, False) for c in _children(node) if id(c) not in sizes]
    return sizes[id(root)]


def safe_load(text: str, name: str | None = None) -> Any:
    """`yaml.safe_load` that also refuses duplicate keys (any `!!python/...` tag is an error)
    and documents that expand beyond MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels.
    `name` (the file, or the `--set` item) is what error marks say the text came from.
    """
    loader = _UniqueKeyLoader(text)
    if name is not None:
        loader.name = name  # marks made from here on name it, not "<unicode string>"
    try:
        try:
            node = loader.get_single_node()  # type: ignore[no-untyped-call]
        except RecursionError:
            raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels") from None
        if node is None:
            return None
        check_yaml_budget(node)
        return loader.construct_document(node)  # type: ignore[no-untyped-call]
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


PATH_FIELDS = (
    ("model", "path"),
    ("scoring", "clip_model"),
    ("balance", "source"),
    ("reference", "source"),
    ("eval_set", "source"),
    ("conditioning", "source", "path"),
    ("conditioning", "source", "mask_folder"),
    ("conditioning", "mask"),
    ("conditioning", "ip_adapter", "image"),
)

# (block, field, default) left out of the recipe hash while at their default.
_UNSET_IF_DEFAULT: tuple[tuple[str | None, str, Any], ...] = (
    ("balance", "conditioning", "text"),
    ("balance", "adapt", "none"),
    ("balance", "lora", None),
    ("sampling", "guidance_jitter", None),
    (None, "slots", {}),
    (None, "adapters", []),
    ("validation", "max_failed_fraction", 0.001),
)
# Fields deeper in a block left out of the recipe hash while unset (None or empty).
_NESTED_UNSET_IF_EMPTY = (
    ("conditioning", "source", "mask_column"),
    ("conditioning", "source", "mask_folder"),
    ("conditioning", "ip_adapter", "image"),
)
# Per-class fields left out of the recipe hash while unset (None or empty).
_CLASS_UNSET_IF_EMPTY = ("slots", "negative_prompt", "guidance_scale", "steps", "adapters")

# (block, field) left out of the recipe hash while unset (None or empty).
_UNSET_IF_EMPTY = (
    (None, "reference"),
    (None, "eval_set"),
    ("checks", "near_copy"),
    ("checks", "contaminated"),
    ("checks", "semantic_duplicate"),
    ("validation", "metrics"),
    ("output", "c2pa"),
    (None, "conditioning"),
    ("balance", "strength"),
)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one `dotted.key=value` override; the value is read as a YAML scalar/list."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected dotted.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {item!r}: empty key segment")
    try:
        value = safe_load(raw, f"--set {dotted}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: cannot parse value {raw!r}: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str], cwd: Path) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` applied.

    Lists are addressed by index (`classes.0.prompts`). Path fields given on the command
    line are relative to the current directory, so they are made absolute here; a URL
    (`s3://...`) is a URL, never a path, and is left as it is.
    """
    out = _plain_copy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], create=True)
        last = parts[-1]
        if tuple(parts) in PATH_FIELDS and isinstance(value, str) and not is_url(value):
            value = str((cwd / value).resolve())
        if isinstance(node, list):
            node[_index(node, last, parts)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    return out


def _plain_copy(data: Any) -> Any:
    """A deep copy of parsed YAML as plain dicts and lists, mapping keys made strings as JSON
    would make them. Iterative and bounded: a dict handed in by code (not read by safe_load)
    that expands beyond MAX_YAML_NODES, or refers to itself, is refused.
    """
    if not isinstance(data, dict | list | tuple):
        return data
    root: Any = {} if isinstance(data, dict) else []
    stack: list[tuple[Any, Any]] = [(data, root)]
    copied = 0
    while stack:
        src, dst = stack.pop()
        copied += len(src)
        if copied > MAX_YAML_NODES:
            raise RecipeError(
                f"the recipe expands to more than {MAX_YAML_NODES} values (or refers to itself)"
            )
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, dict | list | tuple):
                child: Any = {} if isinstance(v, dict) else []
                stack.append((v, child))
                v = child
            if isinstance(dst, dict):
                dst[_json_key(k)] = v
            else:
                dst.append(v)
    return root


def _json_key(key: Any) -> str:
    if key is True or key is False or key is None:
        return json.dumps(key)
    return key if isinstance(key, str) else str(key)


def _index(node: list[Any], part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"--set {'.'.join(parts)}: no list item {part!r}")
    return int(part)


def _child(node: Any, part: str, parts: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, parts)]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    if part not in node:
        if not create:
            raise RecipeError(f"--set {'.'.join(parts)}: no such field")
        node[part] = {}
    return node[part]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, list, dict, Annotated)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _field_names_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed where `loc` (an error location) points: its parent's fields."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue  # a list index or dict key: same models
        found = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        if found:
            models = [m for a in found for m in _models_in(a)]
    return sorted({name for m in models for name in m.model_fields})


def did_you_mean(name: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` (difflib), or ''."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_validation_error(
    exc: ValidationError, source: str, overridden: dict[str, str] | None = None
) -> str:
    """One line per problem; a problem in a field given with `--set` names that `--set`
    (the file did not say it), the others name the file."""
    overridden = overridden or {}
    lines = []
    from_set = 0
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field" + did_you_mean(str(err["loc"][-1]), _field_names_at(err["loc"]))
        item = next((v for k, v in overridden.items() if loc == k or loc.startswith(k + ".")), None)
        from_set += item is not None
        lines.append(f"  --set {item}: {loc}: {msg}" if item else f"  {loc}: {msg}")
    n = exc.error_count()
    if from_set == n:
        head = f"--set: invalid override of recipe {source} ({n} problem(s))"
    else:
        head = f"{source}: invalid recipe ({n} problem(s))"
    return "\n".join([head, *lines])


def recipe_from_dict(
    data: Any, source: str = "<recipe>", overridden: dict[str, str] | None = None
) -> Recipe:
    """Validate a recipe; `overridden` (dotted field -> the `--set` item) lets an error in
    a field set on the command line name the `--set` rather than `source`."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, source, overridden)) from None


def _overridden(overrides: list[str]) -> dict[str, str]:
    """Dotted field -> the `--set` item that set it (the last one wins, as when applied)."""
    out = {}
    for item in overrides:
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.strip()] = f"{key.strip()}={shown_url(value) if is_url(value) else value}"
    return out


def read_recipe_dict(path: Path) -> dict[str, Any]:
    """Read a recipe file with a safe loader that also refuses duplicate keys and tags."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: recipe file is larger than {MAX_RECIPE_BYTES} bytes")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        data = safe_load(text, str(path))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid recipe YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Load, override and validate a recipe; returns it and the folder its paths resolve from."""
    path = Path(path)
    data = read_recipe_dict(path)
    data = apply_overrides(data, overrides or [], Path.cwd())
    return recipe_from_dict(data, str(path), _overridden(overrides or [])), path.resolve().parent


def load_recipe_source(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> tuple[Recipe, Path]:
    """A recipe from a file (paths relative to it) or a dict (paths relative to the cwd)."""
    if isinstance(source, dict):
        data = apply_overrides(source, overrides or [], Path.cwd())
        return recipe_from_dict(data, "<recipe dict>", _overridden(overrides or [])), Path.cwd()
    return load_recipe(source, overrides)


def resolve_path(base_dir: Path, value: str) -> Path:
    """A local path named in a recipe: absolute, or relative to `base_dir` (the recipe's
    folder). A URL is refused by name here (`file://` is its local path): a folder that
    must be read locally cannot be an `s3://` one."""
    url = _URL.fullmatch(value)
    if url is not None:
        if url.group(1) == "file":
            return Path(url.group(3))
        raise RecipeError(
            f"{shown_url(value)}: a URL where a local path is needed (model, CLIP, adapter "
            "and credential folders are read from this machine)"
        )
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()
