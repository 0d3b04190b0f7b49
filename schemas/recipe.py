"""The recipe: what a build makes. Validated, frozen, hashed; no I/O beyond reading the YAML."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=64)]

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
        default=1, ge=1, le=64, description="model copies per worker (several GPUs or streams)"
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


class SamplingSpec(_Frozen):
    scheduler: str = Field(
        default="native",
        description="`native` (the model folder's own) or a sampler of the model's family: "
        + ", ".join(n for n in SCHEDULERS if n != "native"),
    )
    steps: int = Field(default=20, ge=1, le=1000)
    guidance_scale: float = Field(default=1.0, ge=0.0, le=50.0)
    height: int = Field(default=512, ge=8, le=4096)
    width: int = Field(default=512, ge=8, le=4096)
    negative_prompt: str = ""

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

    @field_validator("prompts")
    @classmethod
    def _non_empty_prompts(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("prompt templates must not be empty")
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
    batch_size: int = Field(default=64, ge=1, description="fixed CLIP compute batch (hashed)")
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

    `quantile: q` rejects each class's lowest q of samples (by the score);
    `kept_fraction: f` keeps each class's highest f (the same as `quantile: 1 - f`).
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


class ChecksSpec(_Frozen):
    """Per-image checks; `null` disables one. Names follow cleanvision's vocabulary."""

    clip_score: Threshold | None = Threshold(absolute=0.0)
    label_margin: Threshold | None = None
    blurry: Threshold | None = None
    dark: Threshold | None = None
    light: Threshold | None = None
    low_information: Threshold | None = None
    odd_size: bool = True
    exact_duplicate: bool = True
    near_duplicate: NearDuplicateSpec | None = None
    scores: dict[str, ColumnThreshold] = Field(
        default_factory=dict,
        description="thresholds on score columns by column name (any scorer's column)",
    )

    @model_validator(mode="after")
    def _light_is_absolute(self) -> ChecksSpec:
        if self.light is not None and self.light.absolute is None:
            raise ValueError("light: only an absolute threshold is supported")
        return self


class ValidationSpec(_Frozen):
    """Corpus expectations run after writing (great_expectations)."""

    min_accepted_fraction: float = Field(default=0.0, ge=0.0, le=1.0)


class OutputSpec(_Frozen):
    shard_size: int = Field(default=1000, ge=1)
    image_format: Literal["png", "webp", "jpeg"] = "png"
    png_compress_level: int = Field(default=1, ge=0, le=9)
    quality: int = Field(default=95, ge=1, le=100, description="webp/jpeg quality")


class BalanceSpec(_Frozen):
    """Top up the classes of an existing labelled dataset to a target count after filtering."""

    source: str = Field(min_length=1, description="Parquet, WebDataset shards, or image folder")
    format: Literal["auto", "parquet", "webdataset", "folder"] = "auto"
    label_column: str = "label"
    image_column: str = "image"
    target: Literal["max"] | int | dict[str, int] = "max"
    max_rounds: int = Field(default=4, ge=1, le=20)
    overgenerate: float = Field(
        default=1.1, ge=1.0, le=10.0, description="margin on top of the measured accept rate"
    )
    min_accept_rate: float = Field(
        default=0.02, gt=0.0, le=1.0, description="a class accepting less cannot be filled"
    )

    @field_validator("target")
    @classmethod
    def _positive_target(cls, v: object) -> object:
        if isinstance(v, int) and v < 1:
            raise ValueError("target must be at least 1")
        if isinstance(v, dict) and any(n < 0 for n in v.values()):
            raise ValueError("per-class targets must not be negative")
        return v


class Recipe(_Frozen):
    """A build recipe. Relative paths resolve against the recipe file's folder."""

    name: Slug
    seed: int = Field(default=0, ge=0, lt=2**63)
    model: ModelSpec
    sampling: SamplingSpec = SamplingSpec()
    classes: list[ClassSpec] = Field(min_length=1)
    count_per_class: int | None = Field(default=None, ge=1)
    scoring: ScoringSpec
    checks: ChecksSpec = ChecksSpec()
    validation: ValidationSpec = ValidationSpec()
    balance: BalanceSpec | None = None
    output: OutputSpec = OutputSpec()
    batch_size: int = Field(default=8, ge=1, le=4096)

    @model_validator(mode="after")
    def _count_or_balance(self) -> Recipe:
        if self.count_per_class is None and self.balance is None:
            raise ValueError("count_per_class: required unless the recipe has a balance block")
        return self

    @model_validator(mode="after")
    def _unique_classes(self) -> Recipe:
        ids = [str(c.id) for c in self.classes]
        names = [c.name for c in self.classes]
        for what, values in (("id", ids), ("name", names)):
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"classes: duplicate class {what}: {', '.join(dupes)}")
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
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def class_by_id(self, class_id: int) -> ClassSpec:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)


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


def safe_load(text: str) -> Any:
    """`yaml.safe_load` that also refuses duplicate keys (any `!!python/...` tag is an error)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


PATH_FIELDS = (("model", "path"), ("scoring", "clip_model"), ("balance", "source"))


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one `dotted.key=value` override; the value is read as a YAML scalar/list."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected dotted.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {item!r}: empty key segment")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: cannot parse value {raw!r}: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str], cwd: Path) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` applied.

    Lists are addressed by index (`classes.0.prompts`). Path fields given on the command
    line are relative to the current directory, so they are made absolute here.
    """
    out = json.loads(json.dumps(data))
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], create=True)
        last = parts[-1]
        if tuple(parts) in PATH_FIELDS and isinstance(value, str):
            value = str((cwd / value).resolve())
        if isinstance(node, list):
            node[_index(node, last, parts)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    return out


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


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def recipe_from_dict(data: Any, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, source)) from None


def read_recipe_dict(path: Path) -> dict[str, Any]:
    """Read a recipe file with a safe loader that also refuses duplicate keys and tags."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        data = safe_load(text)
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
    return recipe_from_dict(data, str(path)), path.resolve().parent


def resolve_path(base_dir: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()
