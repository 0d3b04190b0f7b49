"""The recipe: what a build makes. Validated, frozen, hashed; no I/O beyond reading the YAML."""

from __future__ import annotations

import hashlib
import json
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

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

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
    max_sequence_length: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="T5 prompt length (SD3, Flux, PixArt); null keeps the pipeline's default",
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
    label_type: Literal["auto", "name", "id"] = Field(
        default="auto",
        description="how source labels are read: as class names, as class ids, or `auto` "
        "(either; a label that names one class and is the id of another is refused)",
    )
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
        values = [v] if isinstance(v, int) else list(v.values()) if isinstance(v, dict) else []
        if any(n > MAX_COUNT_PER_CLASS for n in values):
            raise ValueError(f"target: at most {MAX_COUNT_PER_CLASS} per class")
        return v


class Recipe(_Frozen):
    """A build recipe. Relative paths resolve against the recipe file's folder."""

    name: Slug
    seed: int = Field(default=0, ge=0, lt=2**63)
    model: ModelSpec
    sampling: SamplingSpec = SamplingSpec()
    classes: list[ClassSpec] = Field(min_length=1)
    count_per_class: int | None = Field(default=None, ge=1, le=MAX_COUNT_PER_CLASS)
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
    def _utf8_everywhere(self) -> Recipe:
        # Prompts are checked per class (naming it); this catches every other string,
        # the negative prompt included, before a tokenizer or writer meets it.
        stack: list[tuple[str, Any]] = [("", self.model_dump())]
        while stack:
            where, value = stack.pop()
            if isinstance(value, str):
                problem = utf8_problem(value)
                if problem:
                    raise ValueError(f"{where}: {problem}")
            elif isinstance(value, dict):
                stack += [(f"{where}.{k}".lstrip("."), v) for k, v in value.items()]
                stack += [(f"{where} key", k) for k in value if isinstance(k, str)]
            elif isinstance(value, list | tuple):
                stack += [(f"{where}.{i}", v) for i, v in enumerate(value)]
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


def safe_load(text: str) -> Any:
    """`yaml.safe_load` that also refuses duplicate keys (any `!!python/...` tag is an error)
    and documents that expand beyond MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels.
    """
    loader = _UniqueKeyLoader(text)
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
    out = _plain_copy(data)
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
