"""Starting a build: `synthgen init`'s recipe scaffolds, and the runner flags that
`synthgen build --workers` / `--devices` stand for.

`synthgen init --model MODEL_DIR` writes a commented recipe for a diffusers folder: the
family and pipeline class from its `model_index.json`, a sampler for its scheduler, the
model's native image size (the denoiser's `sample_size` times the VAE's scale factor), steps
and guidance usual for the family. `synthgen init --from-dataset SRC --label-column COL`
writes a balancing recipe: one class per label of the source (Parquet, WebDataset shards or
class folders), the `balance` block reading it. Both are checked as `synthgen plan` checks
them before anything is written, and an existing file is only replaced with `force`.

Nothing here imports torch, diffusers, Beam or open_clip: a scaffold is written, and a
contradictory `--workers` / `--devices`, refused, in well under a second.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.pipelines.output import BuildError
from synthgen.schemas.errors import ModelFolderError
from synthgen.schemas.recipe import SCHEDULERS, SLUG_PATTERN, Recipe, recipe_from_dict

__all__ = [
    "Scaffold",
    "balance_scaffold",
    "init_recipe",
    "model_scaffold",
    "runner_args",
    "write_scaffold",
]

# The bundled default models (a source checkout): the scaffold's model / CLIP folder when
# none is named.
BUNDLED = Path(__file__).resolve().parents[1] / "models"
BUNDLED_MODEL = BUNDLED / "digits-ldm"
BUNDLED_CLIP = BUNDLED / "digits-clip"

# Per family: (steps, guidance scale, size when the folder's configs do not say).
FAMILY_DEFAULTS: dict[str, tuple[int, float, int]] = {
    "sd": (25, 7.5, 512),
    "sdxl": (30, 5.0, 1024),
    "sd3": (28, 7.0, 1024),
    "flux": (28, 3.5, 1024),
    "pixart-sigma": (20, 4.5, 1024),
    "pixart-alpha": (20, 4.5, 1024),
    "lcm": (4, 8.0, 512),
    "sana": (20, 4.5, 1024),
    "sana-sprint": (2, 4.5, 1024),
}
# Schedulers a folder may ship that sample well at those steps: kept (`native`). Any other
# epsilon scheduler (DDPM, PNDM, LMS...) is replaced by DPM-Solver++.
GOOD_NATIVE = (
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMScheduler",
    "LCMScheduler",
    "TCDScheduler",
    "SCMScheduler",
)


@dataclass(frozen=True)
class Scaffold:
    """A recipe's text (YAML with comments) and the recipe it validates to."""

    text: str
    recipe: Recipe
    notes: tuple[str, ...] = ()  # what the user should know (printed by the CLI)


# -- the model part ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    path: Path
    class_name: str
    family: str
    kind: str
    scheduler_class: str | None
    size: int
    size_note: str
    license: str | None
    negative_prompt: bool


def _read_model(path: Path) -> _Model:
    """What a scaffold needs from a diffusers folder, read from its JSON files only; code,
    foreign links and an unsupported pipeline class are refused by name."""
    from synthgen.generators.families import FAMILIES
    from synthgen.generators.model_folder import read_model_index
    from synthgen.storage.model_card import model_card_license

    index = read_model_index(path)
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or class_name not in FAMILIES:
        raise ModelFolderError(
            f"{path}/model_index.json: _class_name {class_name!r} is not a text-to-image "
            f"pipeline synthgen builds with; supported: {', '.join(FAMILIES)}"
        )
    family = FAMILIES[class_name]
    scheduler = _json(path / "scheduler" / "scheduler_config.json").get("_class_name")
    size, note = _native_size(path, family.denoiser, FAMILY_DEFAULTS[family.name][2])
    return _Model(
        path=path,
        class_name=class_name,
        family=family.name,
        kind=family.kind,
        scheduler_class=scheduler if isinstance(scheduler, str) else None,
        size=size,
        size_note=note,
        license=model_card_license(path),
        negative_prompt=family.negative_prompt,
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _native_size(path: Path, denoiser: str, default: int) -> tuple[int, str]:
    """The image size the model was trained at: the denoiser's `sample_size` (latent
    pixels) times the VAE's scale factor (2 per down block after the first)."""
    sample = _json(path / denoiser / "config.json").get("sample_size")
    if isinstance(sample, list) and sample:
        sample = sample[0]
    blocks = _json(path / "vae" / "config.json").get("block_out_channels")
    if isinstance(sample, int) and sample > 0 and isinstance(blocks, list) and blocks:
        factor = 2 ** (len(blocks) - 1)
        size = sample * factor
        if size % 8 == 0 and 8 <= size <= 4096:
            return size, f"{denoiser} sample_size {sample} x VAE factor {factor}"
    return default, "the family's usual size"


def _sampler(model: _Model) -> tuple[str, str]:
    """(recipe scheduler, its comment)."""
    own = model.scheduler_class or "none"
    kinds = ", ".join(n for n, k in SCHEDULERS.items() if k == model.kind)
    if model.kind == "flow" or own in GOOD_NATIVE:
        return "native", f"the folder's own {own}; others: {kinds}"
    return "dpm-solver++", f"the folder's own {own} is `native`; others: {kinds}"


def _device() -> tuple[str, str]:
    """(device, dtype) for this machine: a GPU when one is usable, else the CPU."""
    from synthgen.pipelines.estimate import device_missing

    return ("cuda", "float16") if device_missing("cuda") is None else ("cpu", "float32")


def _rel(target: Path, recipe_dir: Path) -> str:
    """`target` relative to the recipe's folder (recipe paths resolve from there)."""
    try:
        rel = os.path.relpath(target.resolve(), recipe_dir.resolve())
    except ValueError:  # another drive
        return str(target.resolve())
    # near the recipe (the recipe's folder or its parent's): relative, else absolute
    return str(target.resolve()) if rel.startswith(f"..{os.sep}..") else rel


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(value, ensure_ascii=False)


def _slug(text: str, fallback: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    s = re.sub(r"^[^a-z0-9]+", "", s)[:64]
    return s if re.fullmatch(SLUG_PATTERN, s) else fallback


def _clip_folder(clip: Path | None, model: Path, notes: list[str]) -> Path:
    if clip is not None:
        if not clip.is_dir():
            raise ModelFolderError(f"{clip}: CLIP model folder not found (--clip-model)")
        return clip
    if not BUNDLED_CLIP.is_dir():
        raise BuildError(
            "--clip-model DIR: name the CLIP folder that scores the images (an open_clip "
            "<name>.json + <name>.safetensors, a Hub open_clip or a transformers CLIPModel "
            "folder)"
        )
    if model.resolve() != BUNDLED_MODEL.resolve():
        notes.append(
            f"scoring.clip_model is the bundled {BUNDLED_CLIP.name} (16x16 digits): pass "
            "--clip-model DIR for a CLIP model that knows your images"
        )
    return BUNDLED_CLIP


def _line(text: str, comment: str = "") -> str:
    """One YAML line, its comment aligned."""
    if not comment:
        return f"{text}\n"
    return f"{text:<{max(34, len(text) + 2)}}# {comment}\n"


def _model_block(model: _Model, recipe_dir: Path) -> str:
    device, dtype = _device()
    if device == "cuda" and model.family == "flux":
        dtype = "bfloat16"
    out = _line("model:")
    out += _line(
        f"  path: {_q(_rel(model.path, recipe_dir))}",
        f"{model.class_name} ({model.family}); safetensors only",
    )
    out += _line(f"  dtype: {dtype}", "float16 / bfloat16 on a GPU, float32 on the CPU")
    out += _line(f"  device: {device}", "cuda: one worker process per GPU (build --devices)")
    out += _line("  compute_batch: 4", "images per pipeline call (a fixed shape, hashed)")
    if model.license:
        out += _line(
            f"  # license_ack: {_q(model.license)}",
            "the model card's licence: read it, then uncomment",
        )
    return out


def _sampling_block(model: _Model) -> str:
    steps, guidance, _ = FAMILY_DEFAULTS[model.family]
    scheduler, why = _sampler(model)
    out = _line("sampling:")
    out += _line(f"  scheduler: {scheduler}", why)
    out += _line(f"  steps: {steps}", f"usual for {model.family}")
    out += _line(f"  guidance_scale: {guidance}")
    out += _line(f"  height: {model.size}", model.size_note)
    out += _line(f"  width: {model.size}")
    if model.negative_prompt:
        out += _line('  negative_prompt: ""', 'what to steer away from, e.g. "blurry, text"')
    return out


def _scoring_block(clip: Path, recipe_dir: Path) -> str:
    return (
        _line("scoring:")
        + _line(f"  clip_model: {_q(_rel(clip, recipe_dir))}", "scores image-prompt similarity")
        + _line("  scorers:")
        + _line("    - {name: clip}")
        + _line("    - {name: image_stats}")
        + _line("checks:", "null disables a check (docs/recipe.md)")
        + _line("  clip_score: {absolute: 0.0}", "below: rejected; tune after a first report")
        + _line("output:")
        + _line("  shard_size: 100", "samples per shard: the unit of output and resume")
        + _line("batch_size: 4", "samples per scoring call")
    )


def _finish(text: str, out: Path, notes: list[str], count_source: bool = False) -> Scaffold:
    """The scaffold checked as `synthgen plan` checks it (paths from `out`'s folder)."""
    import yaml

    from synthgen.pipelines.estimate import check_inputs

    recipe = recipe_from_dict(yaml.safe_load(text), str(out))
    check_inputs(recipe, out.parent.resolve(), count_source=count_source)
    return Scaffold(text, recipe, tuple(notes))


def model_scaffold(
    model_dir: Path,
    out: Path,
    *,
    classes: Sequence[str] = ("cat", "dog"),
    clip_model: Path | None = None,
    name: str | None = None,
) -> Scaffold:
    """A fixed-count recipe for a diffusers folder (module doc)."""
    model = _read_model(model_dir)
    notes: list[str] = []
    clip = _clip_folder(clip_model, model_dir, notes)
    recipe_dir = out.parent
    bad = [c for c in classes if not re.fullmatch(SLUG_PATTERN, c)]
    if bad or not classes:
        raise BuildError(
            f"--classes: {', '.join(map(repr, bad)) or 'none given'}: a class name is "
            "lower-case letters, digits, _ and -, starting with a letter or digit"
        )
    lines = "".join(
        f"  - {{id: {i}, name: {c}, prompts: [{_q('a photo of ' + _a(_words(c)))}]}}\n"
        for i, c in enumerate(classes)
    )
    text = (
        f"# A first recipe for {model_dir.name} ({model.class_name}), written by `synthgen init`.\n"
        "# Relative paths resolve against this file's folder. Every field: docs/recipe.md.\n"
        f"#   synthgen plan {out}                the plan and every cheap check\n"
        f"#   synthgen plan {out} --estimate     + the time it takes on this machine\n"
        f"#   synthgen build {out} -o OUT\n"
        f"name: {_q(name or _slug(model_dir.name, 'corpus'))}\n"
        "seed: 0\n"
        + _model_block(model, recipe_dir)
        + _sampling_block(model)
        + _line("classes:", "your classes: id, name (a-z 0-9 _ -), prompts")
        + lines
        + _line("count_per_class: 10", "a small first build; raise it once the report looks right")
        + _scoring_block(clip, recipe_dir)
    )
    return _finish(text, out, notes)


def _words(name: str) -> str:
    return re.sub(r"[_-]+", " ", name)


def _a(words: str) -> str:
    """`words` with an indefinite article: "a cat", "an apple"."""
    return ("an " if words[:1] in "aeiou" else "a ") + words


def _labels(location: str, label_column: str, image_column: str) -> tuple[str, Counter[str]]:
    """(the source's format, count per label), read as a build reads the source."""
    from synthgen.generators.sources.base import SourceError, SourceOptions
    from synthgen.generators.sources.open import open_source

    options = SourceOptions(label_column=label_column, image_column=image_column)
    try:
        source = open_source(location, options)
        counts = Counter(r.label for r in source.records())
    except SourceError as exc:
        raise BuildError(f"--from-dataset: {exc}") from None
    if not counts:
        raise BuildError(f"--from-dataset: {source.description}: the source is empty")
    return source.format, counts


def balance_scaffold(
    source: str,
    out: Path,
    *,
    label_column: str = "label",
    image_column: str = "image",
    model_dir: Path | None = None,
    clip_model: Path | None = None,
    name: str | None = None,
) -> Scaffold:
    """A balancing recipe for a labelled dataset (module doc): one class per label."""
    notes: list[str] = []
    model_dir = _top_up_model(model_dir, notes)
    model = _read_model(model_dir)
    clip = _clip_folder(clip_model, model_dir, notes)
    if "://" in source:
        raise BuildError(f"--from-dataset {source}: init reads a local dataset (a path)")
    location = str(Path(source).resolve())  # a shard pattern's braces and globs are kept
    kind, counts = _labels(location, label_column, image_column)
    label_type, classes, class_note = _label_classes(sorted(counts))
    class_lines = "".join(
        f"  - {{id: {cid}, name: {cname}, prompts: [{_q(prompt)}]}}"
        f"   # {counts[label]} in the source\n"
        for cid, cname, prompt, label in classes
    )
    recipe_dir = out.parent
    base = name or _slug(Path(source.rstrip("/")).stem, "dataset") + "-balance"
    text = (
        f"# Balance {Path(source).name} by its labels: the smaller classes are topped up with\n"
        "# synthetic images until every class reaches the target (written by `synthgen init`).\n"
        "# Relative paths resolve against this file's folder. Every field: docs/recipe.md.\n"
        f"#   synthgen plan {out}        each class's count, target and deficit\n"
        f"#   synthgen build {out} -o OUT\n"
        f"name: {_q(_slug(base, 'dataset-balance'))}\n"
        "seed: 0\n"
        + _model_block(model, recipe_dir)
        + _sampling_block(model)
        + _line("classes:", class_note)
        + class_lines
        + _balance_block(
            _rel(Path(location), recipe_dir), kind, label_type, label_column, image_column
        )
        + _scoring_block(clip, recipe_dir)
    )
    return _finish(text, out, notes, count_source=True)


def _top_up_model(model_dir: Path | None, notes: list[str]) -> Path:
    """The folder making a balancing recipe's top-ups: the one named, else the bundled one."""
    if model_dir is not None:
        return model_dir
    if not BUNDLED_MODEL.is_dir():
        raise BuildError("--model MODEL_DIR: name the diffusers folder that makes the top-ups")
    notes.append(f"model.path is the bundled {BUNDLED_MODEL.name}: pass --model for yours")
    return BUNDLED_MODEL


def _label_classes(
    labels: list[str],
) -> tuple[str, list[tuple[int, str, str, str]], str]:
    """A source's labels as recipe classes: (label_type, [(id, name, prompt, label)], the
    classes' comment). Labels that are all numbers are class ids (named `class-<id>`); else
    each label is a class name, refused by name where a recipe cannot hold it."""
    if all(re.fullmatch(r"[0-9]{1,18}", lab) for lab in labels):
        by_id = {int(lab): lab for lab in labels}
        if len(by_id) != len(labels):
            raise BuildError(
                f"--from-dataset: labels {', '.join(map(repr, labels))} name the same class "
                "id more than once (leading zeros?): relabel the source"
            )
        classes = [(i, f"class-{i}", f"an image of class {i}", by_id[i]) for i in sorted(by_id)]
        return "id", classes, "the labels are class ids: give each class a name and describe it"
    bad = [lab for lab in labels if not re.fullmatch(SLUG_PATTERN, lab) or len(lab) > 64]
    if bad:
        shown = ", ".join(repr(b) for b in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise BuildError(
            f"--from-dataset: label(s) {shown} are not class names a recipe can hold "
            "(lower-case letters, digits, _ and -, starting with a letter or digit, at "
            "most 64): relabel the source, or write the recipe's classes by hand"
        )
    classes = [(i, lab, "a photo of " + _a(_words(lab)), lab) for i, lab in enumerate(labels)]
    return "name", classes, "one per label of the source; describe each in its prompts"


def _balance_block(
    where: str, kind: str, label_type: str, label_column: str, image_column: str
) -> str:
    """The recipe's `balance` block: the source (`where`, of format `kind`) and the target."""
    out = _line("balance:") + _line(f"  source: {_q(where)}", kind) + _line(f"  format: {kind}")
    if kind == "parquet":
        out += _line(f"  label_column: {_q(label_column)}")
        out += _line(f"  image_column: {_q(image_column)}")
    return (
        out
        + _line(f"  label_type: {label_type}", f"labels read as class {label_type}s")
        + _line("  target: max", "max (the largest class's count), a number, or {class: n}")
        + _line("  max_rounds: 4", "rounds of top-ups while rejects leave a deficit")
        + _line("  overgenerate: 1.1", "margin on the measured accept rate")
    )


def init_recipe(
    output: str | Path,
    *,
    model: str | Path | None = None,
    from_dataset: str | None = None,
    label_column: str = "label",
    image_column: str = "image",
    clip_model: str | Path | None = None,
    classes: str | None = None,
    name: str | None = None,
    force: bool = False,
) -> Scaffold:
    """`synthgen init`: the scaffold for `model` (fixed count) or `from_dataset` (balancing),
    checked, then written to `output` (an existing file is refused before anything is read,
    unless `force`)."""
    out = Path(output)
    if out.exists() and not force:
        raise BuildError(f"{out}: already exists; not overwritten (add --force to replace it)")
    model_dir = Path(model) if model is not None else None
    clip = Path(clip_model) if clip_model is not None else None
    if from_dataset is not None:
        if classes is not None:
            raise BuildError("--classes: a --from-dataset recipe's classes are its labels")
        scaffold = balance_scaffold(
            from_dataset,
            out,
            label_column=label_column,
            image_column=image_column,
            model_dir=model_dir,
            clip_model=clip,
            name=name,
        )
    elif model_dir is not None:
        names = [c.strip() for c in (classes or "cat,dog").split(",") if c.strip()]
        scaffold = model_scaffold(model_dir, out, classes=names, clip_model=clip, name=name)
    else:
        raise BuildError("init: give --model MODEL_DIR or --from-dataset DIR_OR_PARQUET")
    write_scaffold(scaffold, out, force=force)
    return scaffold


def write_scaffold(scaffold: Scaffold, out: Path, force: bool = False) -> None:
    """Write a checked scaffold; an existing file is replaced only with `force`."""
    from synthgen.storage.atomic import write_bytes_atomic

    if out.exists() and not force:
        raise BuildError(f"{out}: already exists; not overwritten (add --force to replace it)")
    if out.is_dir():
        raise BuildError(f"{out}: is a folder; name the recipe file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, scaffold.text.encode("utf-8"))


# -- --workers / --devices ------------------------------------------------------------------

DIRECT_RUNNERS = ("DirectRunner", "direct", "SwitchingDirectRunner", "BundleBasedDirectRunner")


def _flag(beam_args: Sequence[str], name: str) -> str | None:
    """The value of `--name=V` or `--name V` among Beam's arguments (the last one), else None."""
    found = None
    for i, a in enumerate(beam_args):
        if a.startswith(f"--{name}="):
            found = a.split("=", 1)[1]
        elif a == f"--{name}":
            found = beam_args[i + 1] if i + 1 < len(beam_args) else ""
    return found


def _device_list(devices: str, environ: Mapping[str, str]) -> tuple[int, dict[str, str]]:
    """`--devices N` or `--devices 0,2` (or `cuda:0,cuda:2`): (worker count, environment)."""
    text = devices.strip()
    if re.fullmatch(r"[0-9]+", text):
        n = int(text)
        if n < 1:
            raise BuildError(f"--devices {devices}: at least 1 device")
        return n, {}
    items = [t.strip() for t in text.split(",")]
    indices = []
    for item in items:
        m = re.fullmatch(r"(?:cuda:)?([0-9]+)", item)
        if m is None:
            raise BuildError(
                f"--devices {devices}: {item!r} is not a GPU index; give a count (--devices 4) "
                "or indices (--devices 0,2 or cuda:0,cuda:2)"
            )
        indices.append(int(m.group(1)))
    if len(set(indices)) != len(indices):
        raise BuildError(f"--devices {devices}: a device is listed twice")
    if environ.get("SYNTHGEN_DEVICES", "").strip():
        raise BuildError(
            f"--devices {devices} and SYNTHGEN_DEVICES={environ['SYNTHGEN_DEVICES']} both "
            "choose the GPUs: give one"
        )
    visible = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible:  # indices count among the GPUs this process may see, as torch numbers them
        over = [i for i in indices if i >= len(visible)]
        if over:
            raise BuildError(
                f"--devices {devices}: CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} "
                f"shows {len(visible)} GPU(s), numbered 0-{len(visible) - 1}"
            )
        chosen = [visible[i] for i in indices]
    else:
        chosen = [str(i) for i in indices]
    return len(indices), {"CUDA_VISIBLE_DEVICES": ",".join(chosen)}


def runner_args(
    beam_args: Sequence[str],
    *,
    workers: int | None = None,
    devices: str | None = None,
    model_device: str = "cpu",
    verbose: bool = False,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The Beam arguments (and environment variables to set before any worker starts) that
    `--workers N` / `--devices LIST|N` stand for, from the arguments after `--`.

    - `--workers N`: N DirectRunner worker processes on this machine
      (`--direct_running_mode=multi_processing --direct_num_workers=N`; N = 1: in-process).
      A `--direct_running_mode=multi_threading` after `--` is kept (N threads).
    - `--devices N`: one worker process per GPU, N of them, each claiming a GPU no other
      worker holds (generators.devices). `--devices 0,2`: the same on those GPUs only
      (`CUDA_VISIBLE_DEVICES`, numbered among the GPUs this process may see).
    - What the worker processes log is kept to errors (`verbose`: warnings, all of them)
      unless `--default_sdk_harness_log_level` is given.

    Contradictions are refused by name (BuildError): a count given twice (`--workers` and
    `--direct_num_workers`, `--workers` and `--devices` differing), another runner than
    DirectRunner, `in_memory` with more than one worker, `--devices` for a CPU recipe or one
    pinned to a single GPU, with LOCAL_RANK set, or beside SYNTHGEN_DEVICES.
    """
    env = os.environ if environ is None else environ
    args = list(beam_args)
    updates: dict[str, str] = {}
    if workers is not None and workers < 1:
        raise BuildError(f"--workers {workers}: at least 1 worker")
    count, named = workers, f"--workers {workers}"
    if devices is not None:
        count, updates = _device_workers(devices, workers, model_device, env)
        named = f"--devices {devices}"
    if count is not None:
        args += _direct_workers(args, count, named)
    if _flag(args, "default_sdk_harness_log_level") is None:
        args.append(f"--default_sdk_harness_log_level={'WARNING' if verbose else 'ERROR'}")
    return args, updates


def _device_workers(
    devices: str, workers: int | None, model_device: str, env: Mapping[str, str]
) -> tuple[int, dict[str, str]]:
    """`--devices`: (worker count, environment), refused for a CPU recipe or one pinned to
    one GPU, under a launcher (LOCAL_RANK), or beside a differing `--workers`."""
    if model_device != "cuda":
        pinned = model_device.startswith("cuda:")
        raise BuildError(
            f"--devices {devices}: "
            + (
                f"model.device {model_device!r} pins every worker to that one GPU; "
                "set model.device: cuda"
                if pinned
                else f"the recipe's model.device is {model_device!r}; --devices is for GPU "
                "builds (--set model.device=cuda), --workers N for CPU worker processes"
            )
        )
    if env.get("LOCAL_RANK", "").strip():
        raise BuildError(
            f"--devices {devices} with LOCAL_RANK={env['LOCAL_RANK']} set: the launcher "
            "(torchrun, accelerate) already gives each process its GPU; drop --devices"
        )
    n, updates = _device_list(devices, env)
    if workers is not None and workers != n:
        raise BuildError(
            f"--workers {workers} and --devices {devices}: one worker process per device "
            f"({n}); give one of them"
        )
    return n, updates


def _direct_workers(args: Sequence[str], count: int, named: str) -> list[str]:
    """The DirectRunner arguments for `count` workers (`named`: the option that asked), to
    add to `args`; refused beside another runner or a worker count or mode that contradicts."""
    runner = _flag(args, "runner")
    if runner is not None and runner not in DIRECT_RUNNERS:
        raise BuildError(
            f"{named} sets DirectRunner's worker processes on this machine; "
            f"--runner={runner} sizes its own workers (Dask: the cluster's workers; "
            "Dataflow: --num_workers / --max_num_workers)"
        )
    given = _flag(args, "direct_num_workers")
    if given is not None:
        raise BuildError(
            f"{named} and --direct_num_workers={given} after `--` both set the number of "
            "workers: give one"
        )
    mode = _flag(args, "direct_running_mode")
    if mode == "in_memory" and count > 1:
        raise BuildError(
            f"{named} and --direct_running_mode=in_memory after `--`: in_memory runs one "
            "worker in this process; drop one of them"
        )
    added = ["--direct_running_mode=multi_processing"] if mode is None and count > 1 else []
    return [*added, f"--direct_num_workers={count}"]
