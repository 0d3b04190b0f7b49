"""LoRA and textual-inversion adapters: checked before anything loads, applied per class.

A recipe lists adapters for every class (`adapters`) and per class (`classes[].adapters`);
a balancing build with `adapt: lora` adds one trained LoRA per topped-up class. They form
one table, recorded as a build constant (`adapters` in provenance):

    {"all": [ref, ...], "classes": {"<class name>": [ref, ...]}}
    ref = {kind, name, path, sha256, scale, token[, sampler, timestep_spacing]}

A distillation LoRA (LCM-LoRA, TCD-LoRA, Hyper-SD) samples well only with the sampler it was
distilled for: its file declares it in the safetensors metadata (`sampler`: a recipe sampler
name such as `lcm` or `tcd`; optionally `timestep_spacing`, e.g. `trailing`) or, for a file
published without it, the recipe's adapter entry does (`sampler: lcm`, `timestep_spacing`);
the recipe's sampler (or, with `native`, the model folder's own scheduler) must match, else
the build is refused naming the file and the sampler it needs. The declaration travels in
the table. A kind of adapter the model's pipeline cannot load (textual inversion on a
T5-only family) is refused by name.

`check_adapter` opens only safetensors files (tensors, never code: nothing executes) and
refuses, naming the file: a missing file, anything but safetensors, a LoRA whose modules or
shapes are not the model's, an embedding whose width is not the text encoder's.
`apply_adapters` loads every adapter of the table once (diffusers' `load_lora_weights` under
a name derived from the file's sha256, `load_textual_inversion`); `activate` switches the
LoRAs of one class on with their scales (`set_adapters`) and every other LoRA off.
"""

from __future__ import annotations

import functools
import json
import re
import typing
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import AdapterSpec, Recipe, resolve_path
from synthgen.schemas.recipe.sampling import TimestepSpacing
from synthgen.schemas.records import canonical_json
from synthgen.storage.hashing import file_sha256
from synthgen.storage.model_files import safetensors_header

__all__ = [
    "AdapterError",
    "AdapterRef",
    "activate",
    "adapter_table",
    "apply_adapters",
    "check_adapter",
    "class_loras",
    "lora_key",
    "table_identity",
]

EMPTY_TABLE = "{}"


class AdapterError(ModelFolderError):
    """An adapter file is missing, not safetensors, or not made for the recipe's model."""


@dataclass(frozen=True)
class AdapterRef:
    kind: str  # "lora" | "textual_inversion"
    name: str  # the adapter name in the pipeline: derived from the content hash
    path: str
    sha256: str
    scale: float = 1.0
    token: str | None = None
    sampler: str | None = None  # the sampler a distillation LoRA declares it needs
    timestep_spacing: str | None = None  # and the timestep spacing

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("sampler", "timestep_spacing"):  # only when declared: tables stay as
            if out[name] is None:  # they were for every other adapter
                out.pop(name)
        return out


def adapter_name(sha256: str) -> str:
    return f"a{sha256[:16]}"


# -- checking ------------------------------------------------------------------------------


def _component_shapes(model_path: Path, component: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of one component of a model folder, from its safetensors headers."""
    sub = model_path / component
    shapes: dict[str, tuple[int, ...]] = {}
    for w in sorted(sub.glob("*.safetensors")) if sub.is_dir() else []:
        if w.name.count(".") > 1 and not re.search(r"-\d{5}-of-\d{5}\.safetensors$", w.name):
            continue  # a variant's weights (e.g. *.fp16.safetensors): same shapes
        shapes.update({k: s for k, (_, s) in safetensors_header(w).items()})
    return shapes


# peft (lora_A / lora_B, maybe with an adapter name) and diffusers (lora.down / lora.up)
_LORA_SUFFIX = re.compile(
    r"\.(lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)(\.[A-Za-z0-9_]+)?\.weight$"
)
_LORA_IN = ("lora_A", "lora.down", "lora_down")


def _lora_state_dict(pipeline_class: str, path: Path) -> dict[str, Any]:
    """The file's tensors as the pipeline's LoRA loader would see them (diffusers' key
    conversions applied: kohya / A1111 / older diffusers layouts)."""
    import diffusers
    from safetensors.torch import load_file

    cls = getattr(diffusers, pipeline_class)
    raw = load_file(str(path), device="cpu")
    try:
        out = cls.lora_state_dict(raw)
    except Exception as exc:
        raise AdapterError(f"{path}: not a LoRA {pipeline_class} can load: {exc}") from None
    state = out[0] if isinstance(out, tuple) else out
    return dict(state)


def check_lora(path: Path, model_path: Path, pipeline_class: str) -> None:
    """Every LoRA module must exist in the model with matching input/output widths."""
    state = _lora_state_dict(pipeline_class, path)
    components: dict[str, dict[str, tuple[int, ...]]] = {}
    checked = 0
    for key, tensor in state.items():
        m = _LORA_SUFFIX.search(key)
        if m is None:
            if key.endswith(".alpha"):
                continue
            raise AdapterError(
                f"{path}: tensor {key!r} is not a LoRA weight this model's family "
                f"({pipeline_class}) loads"
            )
        component, _, module = key[: m.start()].partition(".")
        if component not in components:
            components[component] = _component_shapes(model_path, component)
        base = components[component].get(f"{module}.weight")
        if base is None:
            raise AdapterError(
                f"{path}: a LoRA for another model: {component}.{module} does not exist in "
                f"{model_path} ({pipeline_class})"
            )
        shape = tuple(tensor.shape)
        ok = shape[1] == base[1] if m.group(1) in _LORA_IN else shape[0] == base[0]
        if not ok:
            raise AdapterError(
                f"{path}: a LoRA for another model: {key} has shape {list(shape)}, "
                f"{component}.{module} has shape {list(base)}"
            )
        checked += 1
    if not checked:
        raise AdapterError(f"{path}: holds no LoRA weights")


def _text_width(model_path: Path) -> int | None:
    shapes = _component_shapes(model_path, "text_encoder")
    for key, shape in shapes.items():
        if key.endswith("token_embedding.weight") or key.endswith("embed_tokens.weight"):
            return shape[-1]
    return None


def check_embedding(path: Path, model_path: Path, token: str | None) -> str:
    """A textual-inversion file: one tensor of the text encoder's width. Returns the token."""
    header = safetensors_header(path)
    if len(header) != 1:
        raise AdapterError(
            f"{path}: a textual-inversion file holds one embedding tensor; found "
            f"{len(header)} ({', '.join(sorted(header)[:4])})"
        )
    ((key, (_, shape)),) = header.items()
    width = _text_width(model_path)
    if width is not None and (not shape or shape[-1] != width):
        raise AdapterError(
            f"{path}: an embedding for another model: width {shape[-1] if shape else 0}, the "
            f"text encoder of {model_path} has {width}"
        )
    return token or key


def check_adapter(
    spec: AdapterSpec, base_dir: Path, model_path: Path, pipeline_class: str
) -> AdapterRef:
    """One recipe adapter, checked against the model folder; nothing is loaded into a model."""
    path = resolve_path(base_dir, spec.path)
    if path.suffix != ".safetensors":
        raise AdapterError(f"{path}: adapters are loaded from .safetensors files only")
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file not found")
    try:
        header = safetensors_header(path)  # a pickle or anything else fails here, by name
    except ModelFolderError as exc:
        raise AdapterError(str(exc)) from None
    if not header:
        raise AdapterError(f"{path}: holds no tensors")
    token = None
    declared: dict[str, str | None] = {}
    _check_loader(path, spec.kind, pipeline_class)
    if spec.kind == "lora":
        _require_peft(path)
        check_lora(path, model_path, pipeline_class)
        declared = _with_recipe_sampling(path, declared_sampling(path), spec)
    else:
        token = check_embedding(path, model_path, spec.token)
    sha = file_sha256(path)
    return AdapterRef(spec.kind, adapter_name(sha), str(path), sha, spec.scale, token, **declared)


SPACINGS = typing.get_args(TimestepSpacing)
# the diffusers loader method each adapter kind needs on the pipeline class
_LOADERS = {"lora": "load_lora_weights", "textual_inversion": "load_textual_inversion"}


def _check_loader(path: Path, kind: str, pipeline_class: str) -> None:
    """The model's pipeline can load this kind of adapter (no textual inversion without a
    CLIP text encoder: T5-only families such as Wan, LTX, CogVideoX, PixArt)."""
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if cls is not None and not hasattr(cls, _LOADERS[kind]):
        what = "textual-inversion embeddings" if kind == "textual_inversion" else "LoRAs"
        raise AdapterError(f"{path}: {pipeline_class} does not load {what} (kind: {kind})")


def _with_recipe_sampling(
    path: Path, declared: dict[str, str | None], spec: AdapterSpec
) -> dict[str, str | None]:
    """The file's declared sampler and spacing, completed by the recipe's (`sampler`,
    `timestep_spacing` on the adapter); the two disagreeing is refused by name."""
    out = dict(declared)
    for name in ("sampler", "timestep_spacing"):
        mine = getattr(spec, name)
        if mine is None:
            continue
        theirs = out.get(name)
        if theirs is not None and theirs != mine:
            raise AdapterError(
                f"{path}: the file declares {name} {theirs!r}; the recipe's adapter says {mine!r}"
            )
        out[name] = mine
    return out


def declared_sampling(path: Path) -> dict[str, str | None]:
    """The sampler (and timestep spacing) a LoRA file declares in its safetensors metadata."""
    from safetensors import safe_open

    from synthgen.generators.families import SCHEDULER_CLASSES

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    sampler, spacing = meta.get("sampler"), meta.get("timestep_spacing")
    if sampler is not None and sampler not in SCHEDULER_CLASSES:
        raise AdapterError(
            f"{path}: declares sampler {sampler!r}; known samplers: {', '.join(SCHEDULER_CLASSES)}"
        )
    if spacing is not None and spacing not in SPACINGS:
        raise AdapterError(
            f"{path}: declares timestep_spacing {spacing!r}; one of {', '.join(SPACINGS)}"
        )
    return {"sampler": sampler, "timestep_spacing": spacing}


def check_adapter_sampling(recipe: Recipe, refs: Sequence[AdapterRef], model_path: Path) -> None:
    """Each distillation LoRA's declared sampler and spacing against the recipe's effective
    ones (`native`: the model folder's own scheduler); refused naming the file."""
    from synthgen.generators.families import SCHEDULER_CLASSES

    s = recipe.sampling
    config: dict[str, Any] = {}
    own = model_path / "scheduler" / "scheduler_config.json"
    if own.is_file():
        config = json.loads(own.read_text(encoding="utf-8"))
    by_class = {cls: name for name, (cls, _) in SCHEDULER_CLASSES.items()}
    own_class = str(config.get("_class_name"))
    sampler = by_class.get(own_class, "native") if s.scheduler == "native" else s.scheduler
    shown = f"'native' ({own_class})" if s.scheduler == "native" else repr(sampler)
    spacing = s.timestep_spacing or config.get("timestep_spacing")
    for ref in refs:
        if ref.sampler is not None and ref.sampler != sampler:
            raise AdapterError(
                f"{ref.path}: a distillation LoRA for the {ref.sampler!r} sampler; the recipe "
                f"samples with {shown} (set sampling.scheduler: {ref.sampler})"
            )
        if ref.timestep_spacing is not None and ref.timestep_spacing != spacing:
            raise AdapterError(
                f"{ref.path}: samples with {ref.timestep_spacing!r} timestep spacing; the "
                f"recipe's is {spacing!r} (set sampling.timestep_spacing: "
                f"{ref.timestep_spacing})"
            )


def _require_peft(path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise AdapterError(f"{path}: LoRA adapters need the `peft` library: pip install peft")


def adapter_table(recipe: Recipe, base_dir: Path, model_path: Path, pipeline_class: str) -> str:
    """The recipe's adapters checked and hashed, as the table's canonical JSON."""
    if not recipe.adapters and not any(c.adapters for c in recipe.classes):
        return EMPTY_TABLE
    common = [check_adapter(a, base_dir, model_path, pipeline_class) for a in recipe.adapters]
    per_class = {
        c.name: [check_adapter(a, base_dir, model_path, pipeline_class) for a in c.adapters]
        for c in recipe.classes
        if c.adapters
    }
    check_adapter_sampling(
        recipe, [*common, *(r for v in per_class.values() for r in v)], model_path
    )
    tokens = [r.token for refs in (common, *per_class.values()) for r in refs if r.token]
    dupes = sorted({t for t in tokens if tokens.count(t) > 1})
    if dupes:
        raise AdapterError(f"textual inversion token {dupes[0]!r} is given by two files")
    return dump_table(common, per_class)


def dump_table(common: Sequence[AdapterRef], per_class: dict[str, list[AdapterRef]]) -> str:
    if not common and not any(per_class.values()):
        return EMPTY_TABLE
    return canonical_json(
        {
            "all": [r.to_dict() for r in common],
            "classes": {k: [r.to_dict() for r in v] for k, v in sorted(per_class.items()) if v},
        }
    )


def load_table(
    table: str | dict[str, Any] | None,
) -> tuple[list[AdapterRef], dict[str, list[AdapterRef]]]:
    data = json.loads(table) if isinstance(table, str) else (table or {})
    common = [AdapterRef(**r) for r in data.get("all", [])]
    per_class = {k: [AdapterRef(**r) for r in v] for k, v in data.get("classes", {}).items()}
    return common, per_class


def with_class_adapters(table: str, extra: dict[str, list[AdapterRef]]) -> str:
    """The table with more adapters for some classes (trained LoRAs)."""
    common, per_class = load_table(table)
    merged = {k: list(v) for k, v in per_class.items()}
    for name, refs in extra.items():
        merged[name] = [*merged.get(name, []), *refs]
    return dump_table(common, merged)


def table_identity(table: str | dict[str, Any]) -> dict[str, str]:
    """Content hashes of the table's files, for the build's identity (resume)."""
    common, per_class = load_table(table)
    out = {f"adapter_all_{i}_sha256": ref.sha256 for i, ref in enumerate(common)}
    for name, refs in sorted(per_class.items()):
        # by position, not path: the identity is the same wherever the files are
        out.update({f"adapter_{name}_{i}_sha256": ref.sha256 for i, ref in enumerate(refs)})
    return out


def class_loras(table: str | dict[str, Any], class_name: str) -> tuple[tuple[str, float], ...]:
    """The (adapter name, scale) pairs switched on for a class, in table order."""
    common, per_class = load_table(table)
    refs = [*common, *per_class.get(class_name, [])]
    return tuple((r.name, r.scale) for r in refs if r.kind == "lora")


@functools.lru_cache(maxsize=4096)
def lora_key(table: str, class_name: str) -> tuple[tuple[str, float], ...]:
    return class_loras(table, class_name) if table and table != EMPTY_TABLE else ()


# -- loading -------------------------------------------------------------------------------


def _verify(ref: AdapterRef) -> Path:
    path = Path(ref.path)
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file not found")
    if file_sha256(path) != ref.sha256:
        raise AdapterError(
            f"{path}: the adapter's content differs from the one recorded "
            f"(sha256 {ref.sha256[:12]})"
        )
    return path


def apply_adapters(pipe: Any, table: str) -> Any:
    """Load every adapter of the table into `pipe` (each file's hash checked first); all
    LoRAs start switched off. Returns the pipe."""
    if not table or table == EMPTY_TABLE:
        return pipe
    from safetensors.torch import load_file

    common, per_class = load_table(table)
    loaded: set[str] = set()
    for ref in [*common, *(r for name in sorted(per_class) for r in per_class[name])]:
        if ref.name in loaded:
            continue
        loaded.add(ref.name)
        state = load_file(str(_verify(ref)), device="cpu")
        if ref.kind == "lora":
            with warnings.catch_warnings():  # peft's note on a second adapter: intended here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(state, adapter_name=ref.name)
        else:
            pipe.load_textual_inversion(state, token=ref.token)
    if any(r.kind == "lora" for r in [*common, *(r for v in per_class.values() for r in v)]):
        pipe.disable_lora()
    pipe._synthgen_loras = ()
    return pipe


def activate(pipe: Any, loras: tuple[tuple[str, float], ...]) -> None:
    """Switch on exactly `loras` (name, scale) — or every LoRA off when empty."""
    if getattr(pipe, "_synthgen_loras", ()) == loras:
        return
    if loras:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])
    else:
        pipe.disable_lora()
    pipe._synthgen_loras = loras


# -- model calls ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CallParams:
    """What one pipeline call shares: steps, guidance and the switched-on LoRAs."""

    steps: int
    guidance_scale: float
    loras: tuple[tuple[str, float], ...] = ()


def call_chunks(
    requests: Sequence[Any],
    steps: int,
    guidance_scale: float,
    table: str,
    compute_batch: int,
) -> list[tuple[list[Any], int, CallParams]]:
    """Requests grouped by what a call shares (first appearance first), each group cut into
    fixed-shape padded chunks (`schemas.batches.padded_chunks`): an image still depends only
    on its own request and the call's shape, never on its neighbours."""
    from synthgen.schemas.batches import padded_chunks

    groups: dict[CallParams, list[Any]] = {}
    for r in requests:
        params = CallParams(
            r.sample_steps if r.sample_steps is not None else steps,
            r.sample_guidance_scale if r.sample_guidance_scale is not None else guidance_scale,
            lora_key(table, r.class_name),
        )
        groups.setdefault(params, []).append(r)
    return [
        (list(padded), real, params)
        for params, members in groups.items()
        for padded, real in padded_chunks(members, compute_batch)
    ]
