"""The Python API: `synthgen.build(...)` and `synthgen.load(DIR)`.

import synthgen

result = synthgen.build("recipes/digits.yaml", "out/digits", overrides=["count_per_class=5"])
corpus = synthgen.load(result.output)
corpus.manifest.counts.accepted            # typed manifest
for image, label in corpus.webdataset().decode("pil").to_tuple("png", "cls"): ...
table = corpus.arrow().to_table(columns=["key", "class_name", "status"])

balanced = synthgen.load("out/digits-balance").balanced()   # a balancing build
balanced.table                                # the index: real + synthetic rows
for image, label in balanced: ...             # real images from the source, synthetic from tars

for clip in synthgen.load("out/moving-digits").clips():   # a video build
    clip.frames, clip.label, clip.fps         # uint8 (F, H, W, 3) decoded frames, class id, rate
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from synthgen.pipelines.session import BuildResult
    from synthgen.schemas.manifest import Manifest
    from synthgen.schemas.recipe import Recipe


def build(
    recipe: str | Path | Mapping[str, Any] | Recipe,
    output: str | Path | None = None,
    *,
    publish: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    beam_args: list[str] | None = None,
    progress: bool = False,
) -> BuildResult:
    """Build a corpus, exactly as `synthgen build` does; returns a typed `BuildResult`.

    `recipe` is a YAML path, a dict (relative paths resolve against the current directory)
    or a `Recipe`. Give `output` (a directory) or `publish` (a root for versioned builds).
    Raises `RecipeError`, `ModelFolderError` or `BuildError` naming the problem; a corpus
    that fails its expectations raises `ValidationFailed` (its `.result` has the manifest).
    """
    from synthgen.pipelines.runcontext import RunContext
    from synthgen.schemas.recipe import load_recipe_source

    run = RunContext()  # this call's clock, early gate and opened output
    source = recipe if isinstance(recipe, str | Path) else _as_dict(recipe)
    load_recipe_source(source, overrides)  # a bad recipe is reported before anything starts
    run.prestart_gate()  # a first build's gate loads great_expectations on another core meanwhile
    with _quiet_beam_import():
        from synthgen.pipelines.build import run_build

    return run_build(
        source,
        output,
        overrides=overrides,
        resume=resume,
        beam_args=beam_args,
        show_progress=progress,
        publish_root=publish,
        run=run,
    )


@contextlib.contextmanager
def _quiet_beam_import() -> Iterator[None]:
    """Beam's import warns on the root logger that Google Cloud client libraries are missing
    (`apitools not found`: it concerns only GCP connectors), through `logging.warning`, which
    would also give a program that set up no logging a root handler. A temporary null
    handler and filter keep both out of the caller's process."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if guard is not None:
            root.removeHandler(guard)


def _as_dict(recipe: Mapping[str, Any] | Recipe) -> dict[str, Any]:
    from synthgen.schemas.recipe import Recipe

    if isinstance(recipe, Recipe):
        return recipe.model_dump(mode="json")
    return dict(recipe)


@dataclass(frozen=True)
class Corpus:
    """A complete build: its typed manifest and readers over its shards."""

    path: Path
    manifest: Manifest

    @property
    def tars(self) -> list[str]:
        from synthgen.schemas.manifest import shard_files

        return [str(self.path / shard_files(s.shard).tar) for s in self.manifest.shards]

    @property
    def parquets(self) -> list[str]:
        from synthgen.schemas.manifest import shard_files

        return [str(self.path / shard_files(s.shard).parquet) for s in self.manifest.shards]

    def webdataset(self, **kwargs: Any) -> Any:
        """A `webdataset.WebDataset` over the shards (accepted samples: image, json, txt, cls)."""
        import webdataset as wds

        kwargs.setdefault("shardshuffle", False)
        return wds.WebDataset(self.tars, **kwargs)

    def arrow(self) -> Any:
        """A `pyarrow.dataset.Dataset` over every attempted sample's metadata row."""
        import pyarrow.dataset as ds

        return ds.dataset(self.parquets, format="parquet")

    @property
    def is_video(self) -> bool:
        """Whether the build made clips (`sampling.num_frames` set) rather than images."""
        from synthgen.pipelines.card import clips

        return clips(self.manifest) is not None

    def clips(self) -> Iterator[Clip]:
        """The accepted clips of a video build, shard by shard in tar order, each decoded
        (PyAV) to its frames as it is reached: `Clip.frames` is uint8 (F, H, W, 3).
        Raises `BuildError` for an image build."""
        from synthgen.pipelines.card import clips, media_member
        from synthgen.pipelines.output import BuildError
        from synthgen.storage.codecs import codec_for_extension
        from synthgen.storage.tars import iter_tar_samples

        video = clips(self.manifest)
        if video is None:
            raise BuildError(f"{self.path}: an image build (no sampling.num_frames): no clips")
        ext = media_member(self.manifest)
        codec = codec_for_extension(ext)()
        for tar in self.tars:
            for sample in iter_tar_samples(tar, extensions={ext, "cls", "txt", "json"}):
                parts = sample.members
                if ext not in parts:
                    continue
                prov = json.loads(parts["json"]) if "json" in parts else {}
                yield Clip(
                    key=sample.key,
                    label=int(parts["cls"]),
                    class_name=str(prov.get("class_name", "")),
                    prompt=parts.get("txt", b"").decode("utf-8"),
                    fps=int(prov.get("fps") or video.fps),
                    data=parts[ext],
                    frames=codec.decode(parts[ext]),
                )

    def balanced(self, source: str | Path | None = None) -> BalancedIndex:
        """The balanced training set of a balancing build: real and synthetic samples together.

        Its `table` is the balanced index (`source` "real" or "synthetic", `label`,
        `class_name`, `reference` into the source, `key` and `shard` of a synthetic sample);
        iterating it gives `(PIL image, label)` pairs. Real images are read from the source the
        build balanced (as the manifest records it), or from `source` when it has moved since.
        Raises `BuildError` for a build that did not balance.
        """
        from synthgen.pipelines.output import BuildError

        if self.manifest.balance is None:
            raise BuildError(
                f"{self.path}: not a balancing build (its recipe has no `balance` block): "
                "it has no balanced index"
            )
        return BalancedIndex(self, None if source is None else str(source))


@dataclass(frozen=True)
class Clip:
    """One accepted clip of a video build: its decoded frames and its encoded MP4 (`data`)."""

    key: str
    label: int
    class_name: str
    prompt: str  # the caption (`KEY.txt`)
    fps: int
    data: bytes
    frames: np.ndarray  # uint8 (F, H, W, 3)

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.fps


@dataclass(frozen=True)
class BalancedSample:
    """One sample of a balanced training set, with its encoded image (`data`)."""

    source: str  # "real" | "synthetic"
    label: int
    class_name: str
    reference: str | None  # real: where in the source
    key: str | None  # synthetic: the sample key
    data: bytes

    def image(self) -> Image.Image:
        """The image, decoded with PIL."""
        from PIL import Image

        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image


def _local(build: Path, recorded: str) -> str:
    """A source the manifest records as published (as the recipe wrote it relative to its
    folder, else by name) where this machine read it: the build's private state, else the
    recipe's folder; else as recorded (relative to the current directory)."""
    from synthgen.pipelines.output import read_state

    state = read_state(build)
    if state is None:
        return recorded
    here = [local for local, shown in state.paths.items() if shown == recorded]
    if not here and state.recipe_dir and not Path(recorded).is_absolute() and "://" not in recorded:
        here = [str(Path(state.recipe_dir) / recorded)]
    return here[0] if here else recorded


class BalancedIndex:
    """A balancing build's balanced training set: its index (`table`) and its images.

    Rows come in index order: the real samples in source order, then the accepted synthetic
    ones by shard and key. Reading streams: one shard's images at a time, and the source once.
    """

    def __init__(self, corpus: Corpus, source: str | None = None):
        import pyarrow.parquet as pq

        from synthgen.pipelines.strategies.balance import recorded_source

        balance = corpus.manifest.balance
        assert balance is not None
        self.corpus = corpus
        self.path = corpus.path / balance.balanced_index  # older builds: beside the shards
        self.table: pa.Table = pq.read_table(self.path)
        recorded = recorded_source(balance)
        self.source = source if source is not None else _local(corpus.path, recorded)

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def __iter__(self) -> Iterator[tuple[Image.Image, int]]:
        for sample in self.samples():
            yield sample.image(), sample.label

    def counts(self) -> dict[str, dict[str, int]]:
        """{class name: {"real": n, "synthetic": m}} of the index."""
        out: dict[str, dict[str, int]] = {}
        for name, origin in zip(
            self.table.column("class_name").to_pylist(),
            self.table.column("source").to_pylist(),
            strict=True,
        ):
            per = out.setdefault(name, {"real": 0, "synthetic": 0})
            per[origin] += 1
        return out

    def samples(self) -> Iterator[BalancedSample]:
        """Every row with its encoded image, in index order."""
        rows = self.table.to_pylist()
        yield from self._real([r for r in rows if r["source"] == "real"])
        yield from self._synthetic([r for r in rows if r["source"] == "synthetic"])

    def _real(self, rows: list[dict[str, Any]]) -> Iterator[BalancedSample]:
        from synthgen.generators.sources.base import PixelLimit, SourceError
        from synthgen.generators.sources.open import SourceOptions, open_source
        from synthgen.pipelines.output import BuildError
        from synthgen.schemas.recipe import BalanceSpec
        from synthgen.schemas.records import public_reference

        if not rows:
            return
        spec = BalanceSpec.model_validate(self.corpus.manifest.recipe["balance"])
        try:
            s = self.corpus.manifest.recipe["sampling"]
            limit = PixelLimit(int(s["width"]), int(s["height"]))
            images = open_source(self.source, SourceOptions.of(spec), limit).iter_images()
            at = 0
            for image in images:
                if at == len(rows):
                    break
                row = rows[at]
                if public_reference(image.reference) != public_reference(row["reference"]):
                    continue  # the index records references as published
                if image.label not in (str(row["label"]), row["class_name"]):
                    raise BuildError(
                        f"{self.source}: {image.reference} is labelled {image.label!r} there "
                        f"but {row['class_name']!r} in the balanced index: the source changed"
                    )
                yield BalancedSample(
                    "real", row["label"], row["class_name"], row["reference"], None, image.data
                )
                at += 1
        except SourceError as exc:
            raise BuildError(
                f"the real images of {self.path} are read from the source the build balanced: "
                f"{exc}; pass balanced(source=PATH) where it is now"
            ) from None
        if at < len(rows):
            raise BuildError(
                f"{self.source}: {rows[at]['reference']} is in the balanced index but not in "
                "the source (the source changed since the build?)"
            )

    def _synthetic(self, rows: list[dict[str, Any]]) -> Iterator[BalancedSample]:
        from synthgen.pipelines.card import media_member
        from synthgen.pipelines.output import BuildError
        from synthgen.schemas.manifest import shard_files
        from synthgen.storage.tars import iter_tar_samples

        ext = media_member(self.corpus.manifest)
        tars = {
            s.shard: self.corpus.path / shard_files(s.shard).tar
            for s in self.corpus.manifest.shards
        }
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            by_shard.setdefault(int(r["shard"]), []).append(r)
        for shard, shard_rows in by_shard.items():
            if shard not in tars:
                raise BuildError(f"{self.path}: shard {shard} is not in the manifest")
            images = {
                t.key: t.members[ext] for t in iter_tar_samples(tars[shard], extensions={ext})
            }
            for r in shard_rows:
                if r["key"] not in images:
                    raise BuildError(f"{tars[shard]}: no image for {r['key']}")
                yield BalancedSample(
                    "synthetic", r["label"], r["class_name"], None, r["key"], images[r["key"]]
                )


def load(path: str | Path, *, verify: bool = False) -> Corpus:
    """Open a complete build (a directory, or a publish root whose `latest` is followed).

    `path` may be an object-store URL (`s3://…`, `gs://…`; a publish root's `LATEST` is
    followed): the build is downloaded once into the cache, every listed file checked.
    Refuses a directory without a complete manifest. With `verify`, every file the manifest
    lists is checked against its sha256 first, and every count it states is recounted from
    the data (each shard's Parquet status column and its tar's samples); a mismatch raises
    `BuildError` naming it (`synthgen validate` does the full check).
    """
    from synthgen.pipelines.output import LATEST, BuildError
    from synthgen.schemas.manifest import MANIFEST_NAME, Manifest
    from synthgen.storage.hashing import file_sha256
    from synthgen.storage.store import is_remote

    if is_remote(path):
        from synthgen.pipelines.remote import pull_build

        path = pull_build(str(path))
    root = Path(path)
    if not (root / MANIFEST_NAME).exists() and (root / LATEST).exists():
        root = (root / LATEST).resolve()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BuildError(f"{root}: no {MANIFEST_NAME}: not a complete build")
    manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    if manifest.status != "complete":
        raise BuildError(f"{root}: the build ended as {manifest.status!r}")
    if verify:
        listed = {n: i for s in manifest.shards for n, i in s.files.items()} | manifest.files
        bad = [n for n, i in listed.items() if file_sha256(root / n) != i.sha256]
        if bad:
            raise BuildError(f"{root}: files differ from the manifest: {', '.join(bad)}")
        from synthgen.validators.corpus import recount

        wrong = recount(root, manifest)
        if wrong:
            raise BuildError(f"{root}: counts differ from the data: {'; '.join(wrong)}")
    return Corpus(root, manifest)
