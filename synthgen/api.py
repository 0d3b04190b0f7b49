"""The Python API: `synthgen.build(...)` and `synthgen.load(DIR)`.

import synthgen

result = synthgen.build("recipes/digits.yaml", "out/digits", overrides=["count_per_class=5"])
corpus = synthgen.load(result.output)
corpus.manifest.counts.accepted            # typed manifest
for image, label in corpus.webdataset().decode("pil").to_tuple("png", "cls"): ...
table = corpus.arrow().to_table(columns=["key", "class_name", "status"])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from synthgen.schemas.recipe import load_recipe_source
    from synthgen.validators.gate_process import prestart

    source = recipe if isinstance(recipe, str | Path) else _as_dict(recipe)
    load_recipe_source(source, overrides)  # a bad recipe is reported before anything starts
    prestart()  # a first build's gate loads great_expectations on another core meanwhile
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
        return [
            str(self.path / n) for s in self.manifest.shards for n in s.files if n.endswith(".tar")
        ]

    @property
    def parquets(self) -> list[str]:
        return [
            str(self.path / n)
            for s in self.manifest.shards
            for n in s.files
            if n.endswith(".parquet")
        ]

    def webdataset(self, **kwargs: Any) -> Any:
        """A `webdataset.WebDataset` over the shards (accepted samples: image, json, txt, cls)."""
        import webdataset as wds

        kwargs.setdefault("shardshuffle", False)
        return wds.WebDataset(self.tars, **kwargs)

    def arrow(self) -> Any:
        """A `pyarrow.dataset.Dataset` over every attempted sample's metadata row."""
        import pyarrow.dataset as ds

        return ds.dataset(self.parquets, format="parquet")


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
