"""The dataset card: `README.md` with Hugging Face YAML front matter, written in every build.

The card makes a build directory a Hub dataset as it is: its `default` config names the
WebDataset tars the manifest lists, with `dataset_info` features that keep the training view
(the image as `Image`, the class id as a `ClassLabel` with the class names, the key), so
`datasets.load_dataset(DIR)` gives rows a torch `DataLoader` collates; the `provenance`
config reads every member (prompt and the nested provenance JSON too). The Parquet rows (every
attempt, rejects included, `ClassLabel` names in their schema) read with
`load_dataset("parquet", data_files="DIR/*.parquet")`: one Hub dataset cannot mix tar and
Parquet configs (`datasets` picks one builder, from the first config's files, for all). The
body says how the corpus was made, from what, and what it cannot be trusted for.

A video build's card declares its clips (`KEY.mp4`) as a `datasets` `Video` feature (which
decodes with torchcodec; `Video(decode=False)` gives the MP4 bytes) and says how many frames,
at what rate, each clip holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from synthgen.schemas.manifest import REPORT_JSON, Manifest
from synthgen.schemas.media import DEFAULT_VIDEO_FORMAT
from synthgen.schemas.records import class_label_names
from synthgen.storage.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"

# The Hub's size buckets, by number of accepted samples.
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


def size_category(n: int) -> str:
    for limit, name in _SIZES:
        if n < limit:
            return name
    return "100M<n<1B"


def _license(recipe: dict[str, Any]) -> str:
    """The Hub licence id: the recipe's acknowledged or declared model licence, else unknown."""
    model = recipe.get("model") or {}
    value = model.get("license_ack") or model.get("license")
    return str(value).strip().lower() if value else "unknown"


def _class_names(manifest: Manifest) -> dict[int, str]:
    return {int(c["id"]): str(c["name"]) for c in manifest.recipe.get("classes", [])}


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 image`, `3 images`: a count with its noun agreeing."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class Clips(NamedTuple):
    """What a video build's clips are: frames each, their rate, their format."""

    frames: int
    fps: int
    video_format: str  # `output.video_format`: `mp4`, `mp4-lossless`


def clips(manifest: Manifest) -> Clips | None:
    """The clips of a video build (`sampling.num_frames` set); None: an image build."""
    sampling = manifest.recipe.get("sampling") or {}
    if sampling.get("num_frames") is None:
        return None
    fmt = (manifest.recipe.get("output") or {}).get("video_format") or DEFAULT_VIDEO_FORMAT
    return Clips(int(sampling["num_frames"]), int(sampling.get("fps") or 8), str(fmt))


def _noun(manifest: Manifest) -> str:
    """What one sample of the build is: `image`, or `clip` in a video build."""
    return "image" if clips(manifest) is None else "clip"


def media_member(manifest: Manifest) -> str:
    """The tar member extension of a build's media: images (`png`, `jpg`, `webp`), or a
    video build's clips (`mp4`)."""
    from synthgen.storage.codecs import extension_for

    video = clips(manifest)
    if video is not None:
        return extension_for(video.video_format)
    fmt = str((manifest.recipe.get("output") or {}).get("image_format") or "png")
    return extension_for(fmt)


def default_features(manifest: Manifest) -> list[dict[str, Any]]:
    """The `default` config's `datasets` features (the Hub's YAML form): the image (a video
    build's clip: a `Video`), the class id as a `ClassLabel` named in label order, the key.
    `datasets` keeps only the declared members, so the nested provenance JSON, which default
    collate cannot batch, stays out."""
    names = class_label_names(_class_names(manifest))
    label: dict[str, Any] = {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}
    dtype = "image" if clips(manifest) is None else "video"
    return [
        {"name": media_member(manifest), "dtype": dtype},
        {"name": "cls", "dtype": label if names else "int64"},
        {"name": "__key__", "dtype": "string"},
    ]


def card_metadata(manifest: Manifest) -> dict[str, Any]:
    """The YAML front matter (Hub dataset card metadata) of a build."""
    # A shard whose samples were all rejected has an empty tar, which `datasets` cannot read.
    tars = [n for s in manifest.shards if s.accepted for n in s.files if n.endswith(".tar")]

    def data_files() -> list[dict[str, Any]]:  # one list per config: no YAML anchors
        return [{"split": "train", "path": list(tars)}]

    video = clips(manifest) is not None
    return {
        "license": _license(manifest.recipe),
        "pretty_name": f"synthgen {manifest.recipe_name}",
        "size_categories": [size_category(manifest.counts.accepted)],
        "task_categories": ["video-classification" if video else "image-classification"],
        "tags": ["synthetic", "synthgen", "webdataset", *(["video"] if video else [])],
        "configs": [
            {"config_name": "default", "data_files": data_files(), "default": True},
            {"config_name": "provenance", "data_files": data_files()},
        ],
        "dataset_info": [{"config_name": "default", "features": default_features(manifest)}],
    }


def _headline(out: Path) -> list[str]:
    """The report's headline figures, when report.json is there."""
    path = out / REPORT_JSON
    if not path.is_file():
        return ["(no report.json: run `synthgen report DIR`)"]
    report = json.loads(path.read_text(encoding="utf-8"))
    counts = report.get("counts", {})
    lines = [
        f"- status: {report.get('status')}; planned {counts.get('planned')}, "
        f"accepted {counts.get('accepted')}, rejected {counts.get('rejected')}"
    ]
    reasons = report.get("rejects_by_reason") or {}
    if reasons:
        lines.append(
            "- rejects by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        )
    for name, stats in sorted((report.get("scores") or {}).items()):
        if isinstance(stats, dict) and "mean" in stats:
            lines.append(f"- {name}: mean {stats['mean']:.4g}")
    expectations = report.get("expectations") or {}
    if expectations:
        passed = sum(1 for e in expectations.get("expectations", []) if e.get("success"))
        total = len(expectations.get("expectations", []))
        lines.append(f"- expectations: {passed}/{total} passed")
    return lines


def _rejected(manifest: Manifest) -> str:
    n, failed = manifest.counts.rejected, manifest.counts.failed
    noun = f"generated {_noun(manifest)}"
    text = f"{_count(n, noun)} {'was' if n == 1 else 'were'} rejected by its checks"
    if failed:
        text += f", {failed} failed to generate"
    return text


def _balanced_files(manifest: Manifest) -> str:
    """The Files entry of a balancing build's balanced index ("" for other builds)."""
    b = manifest.balance
    if b is None:
        return ""
    real, total = sum(b.before.values()), sum(b.after.values())
    synthetic = _count(total - real, "synthetic sample")
    return (
        f"- `{b.balanced_index}`: the balanced training index, one row per training sample "
        f"({_count(real, 'real sample')} from the source, {synthetic} from this build): "
        "`source` (`real` | `synthetic`), `label`, `class_name`, `reference` (real: where in "
        "the source), `key` and `shard` (synthetic). "
        "`synthgen.load(DIR).balanced()` reads its real and synthetic images together.\n"
    )


def _model_folder(out: Path, manifest: Manifest) -> Path:
    """The model folder where the build found it: the manifest records it as published (as
    the recipe wrote it, else by name); the build's private state knows where it was."""
    from synthgen.pipelines.output import read_state

    places = state.paths if (state := read_state(out)) is not None else {}
    here = [p for p, shown in places.items() if shown == manifest.model.path]
    return Path(here[0]) if here else Path(manifest.model.path)


def _rendering_domain(manifest: Manifest, out: Path) -> str:
    """A section on the image domain of a model `synthgen train-default` made ("" otherwise):
    read from the model folder's `training.json`, there while the build writes its card."""
    try:
        training = json.loads((_model_folder(out, manifest) / "training.json").read_text("utf-8"))
        if "load_digits" not in str(training.get("data", "")):
            return ""
        size = int(training["diffusion"]["config"]["layout"]["image_size"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return ""
    return f"""
## Rendering domain

The model was trained (`synthgen train-default`) on scikit-learn's 8x8 handwritten digits
rendered at {size}x{size}: grey levels 0-16 scaled to [0, 1], upsampled bilinearly
(`align_corners=False`), white ink on black, as RGB. Its images are in that domain: test a
classifier trained on this corpus on real digits rendered the same way
(`synthgen.generators.training.data.to_images(x, {size})`). Tested on raw 8x8 digits, it meets
a domain it never saw and loses most of what the synthetic images add.
"""


def _intro(manifest: Manifest) -> str:
    """The title and what the corpus is."""
    names = _class_names(manifest)
    video = clips(manifest)
    kind = "image" if video is None else "video"
    each = (
        ""
        if video is None
        else f" Each clip is {_count(video.frames, 'frame')} at {video.fps} fps."
    )
    return f"""
# synthgen {manifest.recipe_name}

A synthetic {kind} corpus made by [synthgen](https://pypi.org/project/synthgen-corpus/) from a
diffusion model: {_count(manifest.counts.accepted, "accepted " + _noun(manifest))} of
{_count(len(names), "class", "classes")} ({_rejected(manifest)}, kept with the reason in the
Parquet metadata only).{each}
"""


def _source(manifest: Manifest) -> str:
    """The model, recipe, sampling settings and build times it came from."""
    sampling = manifest.recipe.get("sampling", {})
    return f"""
## Source

- model: `{manifest.model.path}` ({manifest.model.class_}, sha256 `{manifest.model.sha256}`)
- recipe: `{manifest.recipe_name}`, hash `{manifest.recipe_hash}` (the full recipe is in
  `manifest.json`)
- sampling: {sampling.get("scheduler")} scheduler, {sampling.get("steps")} steps, guidance
  {sampling.get("guidance_scale")}, {sampling.get("width")}x{sampling.get("height")}
- built {manifest.created_at} to {manifest.finished_at} with synthgen
  {manifest.versions.get("synthgen-corpus", "?")}
"""


def _classes(manifest: Manifest) -> str:
    """The classes as a table: id, name, planned samples."""
    names = _class_names(manifest)
    per_class = manifest.counts.planned_per_class
    classes = "\n".join(f"| {i} | {n} | {per_class.get(n, 0)} |" for i, n in sorted(names.items()))
    return f"""
## Classes

| id | name | planned |
|---|---|---|
{classes}
"""


def _files(manifest: Manifest) -> str:
    """Each kind of file of the build and how to read it (with `datasets`)."""
    if clips(manifest) is not None:
        return _clip_files(manifest)
    ext = media_member(manifest)
    balanced = _balanced_files(manifest)
    return f"""
## Files and how to read them

- `*.tar`: WebDataset shards of accepted samples: `KEY.{ext}` (image), `KEY.cls` (class id),
  `KEY.txt` (prompt), `KEY.json` (full provenance: enough to regenerate the image). Samples
  inside a shard are in a seeded, class-mixed order.
- `*.parquet`: the shards' metadata, one row per attempted sample (status, reject reason,
  scores, embeddings; rejected images in `rejected_image`); build-wide provenance in each
  file's metadata. Only shard files match `*.parquet` here.
{balanced}- `manifest.json`: every file with its sha256; trust the build only through it.
- `report.html` / `report.json`: the data-quality report.

```
ds = datasets.load_dataset(DIR, split="train")   # {ext} (Image), cls (ClassLabel), __key__
ds.features["cls"].names                          # the class names, in label order
ds = ds.rename_columns({{"{ext}": "image", "cls": "label"}})   # the usual names, if wanted
datasets.load_dataset(DIR, "provenance", split="train")   # + txt (prompt), json (provenance)
datasets.load_dataset("parquet", data_files=f"{{DIR}}/*.parquet")   # every attempt's row
```

The `default` config is the training view: `ds.with_format("torch")` goes straight into a
`torch.utils.data.DataLoader`. Join it to the metadata on `__key__` = Parquet `key`. Parquet
`class_label` is a `ClassLabel` with the class names above; `rejected_image` an `Image`; the
layout is `synthgen.sample` v4 (docs/output.md of synthgen).
"""


def _clip_files(manifest: Manifest) -> str:
    """A video build's files and how to read its clips."""
    video = clips(manifest)
    assert video is not None
    codec = (
        "H.264 RGB at qp 0: decodes to exactly the frames generated"
        if video.video_format == "mp4-lossless"
        else "H.264 4:2:0, lossy"
    )
    return f"""
## Files and how to read them

- `*.tar`: WebDataset shards of accepted samples, laid out as video2dataset writes them:
  `KEY.mp4` (the clip: {_count(video.frames, "frame")} at {video.fps} fps, {codec}),
  `KEY.cls` (class id), `KEY.txt` (caption: the prompt), `KEY.json` (full provenance: enough
  to regenerate the clip). Samples inside a shard are in a seeded, class-mixed order.
- `*.parquet`: the shards' metadata, one row per attempted sample (status, reject reason,
  scores, embeddings, `frames`, `fps`, `duration_s`, `codec`; rejected clips in
  `rejected_image`); build-wide provenance in each file's metadata.
- `manifest.json`: every file with its sha256; trust the build only through it.
- `report.html` / `report.json`: the data-quality report.

```
ds = datasets.load_dataset(DIR, split="train")   # mp4 (Video), cls (ClassLabel), __key__
ds = ds.cast_column("mp4", datasets.Video(decode=False))   # {{"bytes", "path"}}: no torchcodec
clip = next(iter(synthgen.load(DIR).clips()))    # .frames: uint8 (F, H, W, 3), .label, .key
datasets.load_dataset("parquet", data_files=f"{{DIR}}/*.parquet")   # every attempt's row
```

`datasets` decodes a `Video` with torchcodec (a `VideoDecoder` per clip) when it is installed;
without it, read the bytes (`decode=False`) and decode them with PyAV, or use
`synthgen.load(DIR).clips()`, which decodes each clip to its frames. Join the clips to the
metadata on `__key__` = Parquet `key`. The layout is `synthgen.sample` v4 (docs/output.md of
synthgen).
"""


HOW_IT_WAS_MADE = """
## How it was made

Each sample's key, prompt and seed are pure functions of the recipe; the image was generated
with one seeded generator per image, scored with the recipe's scorers and checked
(per-sample checks and build-wide duplicate checks); the corpus passed the recipe's
great_expectations gate before `manifest.json` was written.
"""

HOW_CLIPS_WERE_MADE = """
## How it was made

Each sample's key, prompt and seed are pure functions of the recipe; the clip was generated
with one seeded generator per clip, encoded with fixed settings (one encoder thread, fixed
quality and key-frame interval, timestamps from the frame index: the same recipe gives the
same bytes), scored on evenly spaced frames with the recipe's scorers and checked (per-sample
checks, temporal checks and build-wide duplicate checks); the corpus passed the recipe's
great_expectations gate before `manifest.json` was written.
"""


def _headline_section(out: Path) -> str:
    """The report's headline figures (or how to make the report)."""
    return f"""
## Headline figures (from report.json)

{chr(10).join(_headline(out))}
"""


def _limitations(manifest: Manifest) -> str:
    """What the corpus cannot be trusted for, and its licence."""
    noun = _noun(manifest)
    return f"""
## Known limitations

- Synthetic {noun}s: they carry the source model's biases and artefacts, and labels are the
  prompts' classes, checked only by the recipe's scorers (an {noun} can pass and still be wrong).
- The scores come from the recipe's own scoring models; their thresholds are not a measure of
  real-world accuracy.
- Licence: the corpus inherits the source model's licence (`{_license(manifest.recipe)}` here);
  check it before use.
"""


def card_text(out: Path, manifest: Manifest) -> str:
    """The whole card: front matter, then what the corpus is and how it was made."""
    meta = {k: v for k, v in card_metadata(manifest).items() if v is not None}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    body = "".join(
        [
            _intro(manifest),
            _source(manifest),
            _classes(manifest),
            _files(manifest),
            _rendering_domain(manifest, out),
            HOW_IT_WAS_MADE if clips(manifest) is None else HOW_CLIPS_WERE_MADE,
            _headline_section(out),
            _limitations(manifest),
        ]
    )
    return f"---\n{front}---\n{body}"


def write_card(out: Path, manifest: Manifest) -> Path:
    """Write `README.md` (the dataset card) into a build directory; returns its path."""
    path = out / CARD_NAME
    write_bytes_atomic(path, card_text(out, manifest).encode("utf-8"))
    logger.info("wrote dataset card %s", path)
    return path
