"""A new source format and a new conditioning mode, each defined in this file alone.

`JsonLinesSource` (a `.jsonl` file of base64 images and labels) registers by subclassing
`Source`, and `format: auto` finds it by its `guess`: it balances and conditions a tiny real
build, and regeneration reads its images back by reference. `MirrorMode` (img2img from the
mirrored source image) registers by subclassing `Mode`: a tiny real build runs it, records
its settings and regenerates from them. No other file knows either.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
import pytest
from PIL import ImageOps

from synthgen.generators.conditioning import ConditioningError, resolve_conditioning
from synthgen.generators.modes.base import Mode, ModeParams, SourceRef, mode_classes
from synthgen.generators.modes.img2img import check_strength
from synthgen.generators.modes.inputs import PoolImage, ResolveContext
from synthgen.generators.modes.worker import WorkerInputs
from synthgen.generators.regenerate import Inputs, find_provenance, regenerate
from synthgen.generators.sources.base import (
    Source,
    SourceError,
    SourceImage,
    SourceOptions,
    guess_format,
    source_classes,
)
from synthgen.generators.sources.open import open_source, read_histogram
from synthgen.pipelines.build import run_build
from synthgen.schemas.recipe import ConditioningSpec, Recipe, recipe_from_dict
from synthgen.schemas.records import GenerationRequest
from synthgen.validators.corpus import validate_dir
from tests.generators.test_conditioning import (
    DIGITS,
    _check_corpus,
    _folder,
    _png,
    _recipe,
    _tar_images,
)

# -- a source format -----------------------------------------------------------------------


class JsonLinesSource(Source):
    """One `.jsonl` file: a line per sample, `{"label": ..., "image": <base64>}`; a sample's
    reference is `<file name>#line=<n>`."""

    format = "jsonl"

    def __init__(self, path: Path):
        self.path = path
        self.description = f"JSON lines {path}"

    @classmethod
    def open(cls, location: str, options: SourceOptions) -> JsonLinesSource:
        path = Path(location)
        if not path.is_file():
            raise SourceError(f"{location}: balance source not found")
        return cls(path)

    @classmethod
    def guess(cls, location: str) -> int:
        return 30 if location.endswith(".jsonl") else 0

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f):
                yield n, json.loads(line)

    def iter_images(self, mask: str | None = None) -> Iterator[SourceImage]:
        if mask is not None:
            raise SourceError(f"{self.description}: holds no masks")
        for n, row in self._lines():
            data = base64.b64decode(row["image"])
            self._check(data, f"{self.path} line {n}")
            yield SourceImage(f"{self.path.name}#line={n}", str(row["label"]), data)

    def read(self, reference: str, mask: str | None = None) -> bytes:
        name, _, n = reference.partition("#line=")
        if name != self.path.name or not n.isdigit():
            raise SourceError(f"{reference}: not a line of {self.path}")
        for i, row in self._lines():
            if i == int(n):
                return base64.b64decode(row["image"])
        raise SourceError(f"{reference}: no such line in {self.path}")


def _jsonl(path: Path, counts: dict[str, int]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for c, (label, n) in enumerate(counts.items()):
            for i in range(n):
                image = base64.b64encode(_png(10 * c + i)).decode()
                f.write(json.dumps({"label": label, "image": image}) + "\n")
    return path


def test_the_format_registers_and_auto_guesses_it(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "data.jsonl", {"zero": 2, "one": 1})
    assert source_classes()["jsonl"] is JsonLinesSource
    assert guess_format(str(source)) == "jsonl"
    assert guess_format(str(tmp_path)) == "folder"  # the other formats keep their guesses
    opened = open_source(str(source))
    assert isinstance(opened, JsonLinesSource)
    images = list(opened.iter_images())
    assert [(i.reference, i.label) for i in images] == [
        ("data.jsonl#line=0", "zero"),
        ("data.jsonl#line=1", "zero"),
        ("data.jsonl#line=2", "one"),
    ]
    assert [opened.read(i.reference) for i in images] == [i.data for i in images]
    recipe = recipe_from_dict(_recipe(balance={"source": str(source)}))
    assert read_histogram(opened, recipe) == {0: 2, 1: 1}


def test_jsonl_source_balances_and_conditions_a_tiny_build(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "real.jsonl", {"zero": 3, "one": 1})
    recipe = _recipe(balance={"source": str(source), "conditioning": "img2img", "strength": 0.5})
    del recipe["count_per_class"]
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    # validates, and the first sample of each class regenerates from the source by reference
    rows = _check_corpus(result.output, "img2img")
    assert rows and all(r["class_name"] == "one" for r in rows.values())
    assert {r["conditioning_source"] for r in rows.values()} == {"real.jsonl#line=3"}
    assert {json.loads(r["conditioning"])["source"]["format"] for r in rows.values()} == {"jsonl"}
    assert result.manifest.balance is not None
    assert result.manifest.balance.before == {"zero": 3, "one": 1}
    assert result.manifest.balance.after == {"zero": 3, "one": 3}
    index = pq.read_table(result.output / "_index" / "balanced.parquet").to_pylist()
    real = sorted(r["reference"] for r in index if r["source"] == "real")
    assert real == [f"real.jsonl#line={n}" for n in range(4)]


# -- a conditioning mode -------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorParams(ModeParams):
    strength: float = 0.5

    def record_extra(self) -> dict[str, Any]:
        return {"strength": self.strength, "mirrored": True}

    @classmethod
    def extra_from_record(cls, d: Any) -> dict[str, Any]:
        return {"strength": float(d["strength"])}


class MirrorMode(Mode):
    """img2img from the source image mirrored left to right."""

    name = "mirror_test"
    params_class = MirrorParams
    pipelines: ClassVar[dict[str, str]] = {
        "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline"
    }
    calls: ClassVar[list[int]] = []  # requests per model call

    def validate(
        self, recipe: Recipe, class_name: str, spec: ConditioningSpec, family: str
    ) -> None:
        super().validate(recipe, class_name, spec, family)
        if spec.source is None:
            raise ConditioningError("conditioning.source: mode mirror_test needs a source")
        check_strength(recipe, class_name, spec.strength)

    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        return MirrorParams(**ctx.common(spec, source), strength=spec.strength)

    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        assert isinstance(params, MirrorParams)
        MirrorMode.calls.append(len(requests))
        images = [ImageOps.mirror(inputs.source_image(params, r)) for r in requests]
        return {"image": images, "strength": params.strength}


def test_the_mode_registers_and_checks_its_fields_first(tmp_path: Path) -> None:
    assert mode_classes()["mirror_test"] is MirrorMode
    recipe = recipe_from_dict(_recipe(conditioning={"mode": "mirror_test"}))  # a plain recipe
    with pytest.raises(ConditioningError, match=r"conditioning\.source: mode mirror_test needs"):
        resolve_conditioning(recipe, tmp_path, DIGITS, "StableDiffusionPipeline")
    with pytest.raises(ConditioningError, match="mirror_test has no diffusers pipeline for Flux"):
        resolve_conditioning(recipe, tmp_path, DIGITS, "FluxPipeline")


def test_a_plugin_mode_builds_records_and_regenerates(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    data = _recipe(
        conditioning={"mode": "mirror_test", "strength": 0.5, "source": {"path": str(source)}}
    )
    MirrorMode.calls.clear()
    result = run_build(data, tmp_path / "out", show_progress=False)
    assert MirrorMode.calls == [2, 2]  # one call per class (compute_batch 2)
    out = result.output
    rows = {r["key"]: r for f in out.glob("[0-9]*.parquet") for r in pq.read_table(f).to_pylist()}
    images = _tar_images(out)
    assert len(rows) == 4 and set(images) <= set(rows)
    for row in rows.values():
        assert row["conditioning_mode"] == "mirror_test"
        params = json.loads(row["conditioning"])
        assert params["mirrored"] is True and params["strength"] == 0.5
        assert params["source"]["format"] == "folder"
        assert row["conditioning_source"].startswith(row["class_name"] + "/")
    # every sample regenerates from its provenance: the mode is found again by its name
    for key, image in images.items():
        assert regenerate(find_provenance(out, key), Inputs.for_build(out)) == image
    assert validate_dir(out).ok  # the manifest naming the plug-in mode validates
