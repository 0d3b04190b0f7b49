"""The on-disk contracts of a build directory, as typed models.

`manifest.json` (written last: a consumer trusts a build only through it), one
`{shard:05d}_stats.json` per finished shard, and `.synthgen/state.json` (what resume checks).
`docs/manifest.schema.json` is generated from `Manifest` so other tools can read a build
without our code; a test keeps it current.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from synthgen.schemas.names import RelativeName
from synthgen.schemas.records import PATH_KEYS, public_path
from synthgen.schemas.scores import ScoreColumn

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION: Literal[2] = 2
STATE_DIR = ".synthgen"
STATE_NAME = "state.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def shard_stem(shard: int) -> str:
    return f"{shard:05d}"


class ShardFiles(NamedTuple):
    """The data files of one shard, by role: the WebDataset tar and the Parquet table."""

    tar: str
    parquet: str


def shard_files(shard: int) -> ShardFiles:
    """The data files of a shard: the tar and the Parquet."""
    stem = shard_stem(shard)
    return ShardFiles(f"{stem}.tar", f"{stem}.parquet")


def stats_name(shard: int) -> str:
    return f"{shard_stem(shard)}_stats.json"


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        """Strict JSON (no NaN/Infinity), indented, keys in declaration order."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, indent=2, allow_nan=False).encode()


class FileInfo(_Contract):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class ShardEntry(_Contract):
    """One `shards[]` entry of the manifest."""

    shard: int = Field(ge=0)
    files: dict[RelativeName, FileInfo]
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    failed: int = Field(
        default=0, ge=0, description="samples whose generation, scoring or encoding raised"
    )


class ShardStats(ShardEntry):
    """`{shard:05d}_stats.json`: written after the shard's tar and Parquet; marks it done."""

    recipe_hash: str
    keys: int = Field(ge=0)

    def entry(self) -> ShardEntry:
        return ShardEntry(
            shard=self.shard,
            files=self.files,
            accepted=self.accepted,
            rejected=self.rejected,
            failed=self.failed,
        )


# Recipe blocks whose strings are text, never paths, whatever their keys (slot names are
# the user's own).
_TEXT_KEYS = frozenset({"prompts", "slots", "negative_prompt", "blocklist", "concepts"})


def published_recipe(data: dict[str, Any], base_dir: str | None = None) -> dict[str, Any]:
    """A recipe (as JSON) as the manifest publishes it: every path field (`PATH_KEYS`) as
    `public_path` records it, relative to `base_dir` (the recipe's folder) as written, else
    by its last segment. Everything else is unchanged; a published recipe publishes as it is.

    The recipe hash is of the recipe as it was given (`recipe_hash` beside it); nothing
    recomputes it from the published copy."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (
                    public_path(v, base_dir)
                    if k in PATH_KEYS and isinstance(v, str)
                    else v
                    if k in _TEXT_KEYS
                    else walk(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return dict(walk(data))


class BuildState(_Contract):
    """`.synthgen/state.json`: the identity of the build an output directory holds.

    Private to the building machine (never published): it keeps where the recipe's inputs
    were, so `regenerate`, `validate --reference` and `verify --regenerate` find them there."""

    recipe_hash: str
    recipe: dict[str, Any]
    created_at: str = Field(description="ISO-8601 UTC start of the build; kept on resume")
    identity: dict[str, str] = Field(
        default_factory=dict,
        description="content hashes behind the recipe's paths (model, scorers); resume "
        "refuses a directory whose identity differs",
    )
    recipe_dir: str | None = Field(
        default=None, description="the folder the recipe's relative paths resolved against"
    )
    paths: dict[str, str] = Field(
        default_factory=dict,
        description="each local path the recipe named (resolved) -> as published files record it",
    )

    def published_recipe(self) -> dict[str, Any]:
        """The recipe as the manifest carries it (`published_recipe`)."""
        return published_recipe(self.recipe, self.recipe_dir)


class ClassFocus(_Contract):
    """Where a round draws one class's samples (`strategy: feedback`): the planner picks, from
    (recipe seed, key), a source image among `sources` for an image-conditioned sample and a
    prompt template by `prompt_weights` (one per class prompt, in order)."""

    sources: list[tuple[str, str]] = Field(
        default_factory=list,
        description="(reference, sha256) of real images of the class, hardest first",
    )
    prompt_weights: list[float] | None = None


class RoundGuidance(_Contract):
    """Sampling-time guidance of one round by a saved probe (`feedback.guidance`): the
    probe file (relative to the build, checked by its sha256) and how it steers; each
    sample is steered toward its own `class_label`."""

    probe: RelativeName
    probe_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    criterion: Literal["loss", "entropy"]
    scale: float
    every: int = Field(ge=1)


class PlanRound(_Contract):
    """What one round of a build plans: a pure description, shipped to every worker.

    `counts` (class id -> end index, exclusive) is None for a fixed-count build, which plans
    `count_per_class` for every class; `start` (class id -> first index) and `shard_offset`
    let a later round plan new keys into new shards; `quota` caps accepted samples per class;
    `focus` (class id -> ClassFocus) draws a class's samples toward what a probe found hard,
    and `guidance` steers the round's sampling with that probe.
    """

    round: int = Field(default=0, ge=0)
    counts: dict[int, int] | None = None
    start: dict[int, int] = Field(default_factory=dict)
    shard_offset: int = Field(default=0, ge=0)
    quota: dict[int, int] | None = None
    focus: dict[int, ClassFocus] | None = None
    guidance: RoundGuidance | None = None

    def plan_kwargs(self) -> dict[str, Any]:
        """The planner's keyword arguments (`generators.planning.plan_shard`)."""
        kw: dict[str, Any] = {
            "counts": self.counts,
            "start": self.start,
            "shard_offset": self.shard_offset,
        }
        if self.focus is not None:
            kw["focus"] = self.focus
        return kw


class ModelInfo(_Contract):
    path: str = Field(
        description="the model folder: as the recipe wrote it relative to its folder, else its "
        "name (never a path of the building machine); `sha256` says which content"
    )
    sha256: str
    class_: str = Field(alias="class")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_dict(self) -> dict[str, str]:
        return self.model_dump(by_alias=True)


class Counts(_Contract):
    planned: int = Field(ge=0)
    attempted: int = Field(ge=0)
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0, description="samples a check rejected (failed ones aside)")
    failed: int = Field(
        default=0, ge=0, description="samples whose generation, scoring or encoding raised"
    )
    planned_per_class: dict[str, int]
    target_accepted_per_class: dict[str, int] | None = None


class BalanceRound(_Contract):
    round: int
    planned: dict[str, int]
    accepted: dict[str, int]


class AdapterInfo(_Contract):
    """A LoRA trained for one class on its real images (`balance.adapt: lora`)."""

    path: str = Field(description="relative to the build, under adapters/")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    images: int = Field(ge=1, description="real images it was trained on")
    steps: int = Field(ge=1)
    rank: int = Field(ge=1)
    learning_rate: float
    scale: float = Field(description="its weight when generating")


class ProbeMetrics(_Contract):
    """A probe's held-out (cross-validated) results on the real images."""

    error: float = Field(ge=0.0, le=1.0, description="1 - accuracy over every real image")
    macro_error: float = Field(ge=0.0, le=1.0, description="mean of the per-class errors")
    macro_f1: float = Field(ge=0.0, le=1.0)
    minority_recall: float = Field(
        ge=0.0, le=1.0, description="mean recall over the classes that started short"
    )
    per_class_error: dict[str, float]
    per_cluster_error: dict[str, list[float]] = Field(
        description="class name -> error per k-means cluster of its real embeddings"
    )
    macro_soft_error: float = Field(
        ge=0.0,
        le=1.0,
        description="mean over classes of 1 - the true class's held-out probability: what "
        "the allocation and the plateau test read (it ranks classes when none is misread)",
    )
    per_class_soft_error: dict[str, float]


class FeedbackRound(_Contract):
    """One probe of a feedback build and what it planned next."""

    round: int = Field(ge=0)
    synthetic_so_far: int = Field(ge=0, description="accepted synthetic images it trained on")
    metrics: ProbeMetrics
    allocation: dict[str, int] = Field(description="class name -> samples planned next")
    reason: str
    given_up: list[str] = Field(
        default_factory=list,
        description="short classes left out of the next round and after: their top-ups "
        "showed (at 95% confidence) that they accept under `balance.min_accept_rate`",
    )
    probe: str | None = Field(default=None, description="the saved probe, relative to the build")
    probe_sha256: str | None = None


# why a feedback build stopped planning rounds (`Feedback._stop_reason`)
FeedbackStop = Literal["budget", "plateau", "targets", "max_rounds", "given_up"]


class FeedbackInfo(_Contract):
    """`strategy: feedback`: every round's probe, and the baselines it is measured against."""

    rounds: list[FeedbackRound]
    stop: FeedbackStop
    baseline: ProbeMetrics = Field(
        description="the probe on the real images, minority classes oversampled and augmented"
    )
    real_only: ProbeMetrics = Field(description="the probe on the real images alone")
    baseline_method: str = Field(description="what the baseline did, in one sentence")


class BalanceInfo(_Contract):
    source: str
    target: dict[str, int]
    before: dict[str, int]
    after: dict[str, int]
    rounds: list[BalanceRound]
    balanced_index: str
    feedback: FeedbackInfo | None = None


class ExpectationInfo(_Contract):
    dataset: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    detail: str


class ValidationInfo(_Contract):
    success: bool
    failures: list[str]
    expectations: list[ExpectationInfo]


class Lineage(_Contract):
    """An extended build: the build it grew from, and every recipe hash its shards carry."""

    parent: str = Field(
        description="the parent build: its store URL, or its folder's name (a local build)"
    )
    parent_recipe_hash: str
    parent_manifest_sha256: str
    recipe_hashes: list[str] = Field(description="oldest first; this build's own last")
    inherited_shards: list[int]


class MetricsInfo(_Contract):
    """Distribution metrics of the accepted samples against the reference set (see
    docs/metrics.md): overall and per class, by metric name (None where a set is too small)."""

    metrics_version: Literal[1] = 1
    reference: str = Field(
        description="the reference source by name (its folder, file or shard pattern), or "
        "its store URL: never a path of the building machine"
    )
    reference_images: int = Field(ge=0)
    reference_cache: str | None = Field(
        default=None, description="the embedded reference set, relative to the build"
    )
    embedding_column: str
    k: int = Field(ge=1, description="nearest neighbours for precision/recall/density/coverage")
    overall: dict[str, float | int | None]
    per_class: dict[str, dict[str, float | int | None]]


class WatermarkInfo(_Contract):
    """The build's invisible watermark (see `storage/watermark.py` for the payload layout)."""

    method: str
    payload: str = Field(description="hex: magic `SG` + the first 4 bytes of the recipe hash")
    skipped: str | None = Field(
        default=None,
        description="why the build's images carry no watermark (too small; clips in a lossy codec)",
    )


class UsageInfo(_Contract):
    """The model's licence and the recipe's usage statement."""

    license: str | None = None
    license_source: Literal["model_card", "recipe"] | None = None
    usage: str | None = None


class Manifest(_Contract):
    """`manifest.json`: every shard with its hashes and counts, the recipe, the versions."""

    manifest_version: Literal[2] = MANIFEST_VERSION
    status: Literal["complete", "failed_validation"]
    recipe_name: str
    recipe_hash: str
    recipe: dict[str, Any]
    created_at: str
    finished_at: str
    versions: dict[str, str]
    model: ModelInfo
    scorers: list[dict[str, Any]]
    score_columns: list[ScoreColumn]
    counts: Counts
    shards: list[ShardEntry]
    validation: ValidationInfo | None = None
    files: dict[RelativeName, FileInfo] = Field(
        default_factory=dict, description="files beside the shards (e.g. balanced.parquet)"
    )
    balance: BalanceInfo | None = None
    lineage: Lineage | None = None
    metrics: MetricsInfo | None = None
    watermark: WatermarkInfo | None = None
    usage: UsageInfo | None = None
    adapters: dict[str, AdapterInfo] | None = Field(
        default=None, description="per-class LoRAs trained for this build, by class name"
    )

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json", exclude_none=True, by_alias=True)
        return json.dumps(data, indent=2, allow_nan=False).encode()

    @property
    def shard_ids(self) -> list[int]:
        return [s.shard for s in self.shards]

    @property
    def recipe_hashes(self) -> list[str]:
        """Every recipe hash a row of this build may carry (more than one when extended)."""
        return self.lineage.recipe_hashes if self.lineage else [self.recipe_hash]

    @property
    def score_column_names(self) -> list[str]:
        return [c.name for c in self.score_columns]


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json, as published in docs/manifest.schema.json."""
    schema = Manifest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "synthgen manifest.json"
    return schema
