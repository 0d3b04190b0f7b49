"""Clip builds extended and balanced: `--extend` of a clip build adds clips in new shards and
keeps the parent's clips byte for byte; a balancing build over a labelled image folder tops
the short classes up with class-conditioned clips. Both validate, PyAV reads every clip with
the frame count its Parquet row states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from synthgen.generators.random_pipelines import save_snapshot
from synthgen.pipelines.build import run_build
from synthgen.pipelines.session import BuildResult
from synthgen.validators.corpus import validate_dir
from tests.conftest import read_rows, write_recipe
from tests.pipelines.test_balance import COUNTS, _samples, make_folder
from tests.pipelines.test_video_build import _clips
from tests.video import CLIPS, FPS, clip_recipe
from tests.video import pyav_frames as _pyav

FAMILY = "animatediff"


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random AnimateDiff model folder, shared by the module."""
    return save_snapshot(FAMILY, tmp_path_factory.mktemp("video-model") / FAMILY, seed=0)


def _assert_clips_match_parquet(out: Path) -> None:
    """Every accepted row has its mp4, PyAV decodes it to the frames and size the row states."""
    _, height, width, frames = CLIPS[FAMILY]
    rows = {r["key"]: r for r in read_rows(out).to_pylist()}
    clips = _clips(out)
    assert set(clips) == {k for k, r in rows.items() if r["status"] == "accepted"}
    for key, data in clips.items():
        row = rows[key]
        decoded, rate = _pyav(data)
        assert row["frames"] == frames == decoded.shape[0], key
        assert decoded.shape[1:] == (height, width, 3), key
        assert (row["fps"], rate) == (FPS, FPS), key


def _assert_validates(out: Path) -> None:
    report = validate_dir(out)
    assert report.ok, report.failures + [str(e) for e in report.failed_expectations()]


# 1. extend ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extended(
    tmp_path_factory: pytest.TempPathFactory, animatediff: Path, model_dir: Path
) -> tuple[Path, BuildResult]:
    """A clip build of two classes of two (two shards of two), then its extension to three a
    class: the parent and the extension's result."""
    tmp = tmp_path_factory.mktemp("video-extend")
    data = clip_recipe(animatediff, FAMILY, model_dir)
    run_build(write_recipe(tmp / "parent.yaml", data), tmp / "parent", show_progress=False)
    grown = {**data, "count_per_class": 3}
    result = run_build(
        write_recipe(tmp / "grown.yaml", grown),
        tmp / "child",
        extend=tmp / "parent",
        show_progress=False,
    )
    return tmp / "parent", result


def test_extend_of_a_clip_build_adds_clips_in_new_shards_and_keeps_the_parents(
    extended: tuple[Path, BuildResult],
) -> None:
    parent, result = extended
    child = result.output
    old_rows = {r["key"]: r for r in read_rows(parent).to_pylist()}
    rows = {r["key"]: r for r in read_rows(child).to_pylist()}
    assert len(old_rows) == 4 and len(rows) == 6
    assert set(old_rows) < set(rows)
    assert result.generated_now == 2
    new_shards = {rows[k]["shard"] for k in set(rows) - set(old_rows)}
    assert new_shards and new_shards.isdisjoint({r["shard"] for r in old_rows.values()})
    for path in parent.glob("0*"):
        if path.suffix in (".tar", ".parquet"):
            assert (child / path.name).read_bytes() == path.read_bytes(), path.name
    old_clips, clips = _clips(parent), _clips(child)
    assert old_clips and all(clips[k] == v for k, v in old_clips.items())
    assert len(clips) > len(old_clips)
    lineage = result.manifest.lineage
    assert lineage is not None and lineage.parent == parent.name
    assert lineage.inherited_shards == sorted({r["shard"] for r in old_rows.values()})


def test_extended_clip_build_validates_and_every_clip_decodes_as_parquet_states(
    extended: tuple[Path, BuildResult],
) -> None:
    _, result = extended
    _assert_validates(result.output)
    _assert_clips_match_parquet(result.output)


# 2. balance -----------------------------------------------------------------------------------


def _balance_recipe(tmp: Path, folder: Path, model_dir: Path, source: Path) -> dict[str, Any]:
    data = clip_recipe(folder, FAMILY, model_dir)
    data["classes"] = [
        {"id": 0, "name": "zero", "prompts": ["a handwritten digit 0"]},
        {"id": 1, "name": "one", "prompts": ["a handwritten digit 1"]},
        {"id": 2, "name": "two", "prompts": ["a handwritten digit 2"]},
    ]
    del data["count_per_class"]
    data["balance"] = {
        "source": str(source),
        "target": "max",
        "strategy": "topup",
        "conditioning": "text",
    }
    return data


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory, animatediff: Path, model_dir: Path) -> Path:
    """A clip build balancing make_folder's labelled images (6, 2, 4) up to the largest."""
    tmp = tmp_path_factory.mktemp("video-balance")
    source = make_folder(tmp / "source")
    data = _balance_recipe(tmp, animatediff, model_dir, source)
    run_build(write_recipe(tmp / "balance.yaml", data), tmp / "out", show_progress=False)
    return tmp / "out"


def test_balancing_an_image_folder_tops_short_classes_up_with_clips(balanced: Path) -> None:
    manifest = json.loads((balanced / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    bal = manifest["balance"]
    assert bal["before"] == COUNTS
    assert bal["target"] == bal["after"] == {"zero": 6, "one": 6, "two": 6}
    assert bal["balanced_index"] == "_index/balanced.parquet"
    topped = {n: sum(r["accepted"].get(n, 0) for r in bal["rounds"]) for n in COUNTS}
    assert topped == {"zero": 0, "one": 4, "two": 2}
    df = pd.read_parquet(balanced / "_index" / "balanced.parquet")
    assert df.groupby("class_name").size().to_dict() == {"zero": 6, "one": 6, "two": 6}
    synthetic = df[df.source == "synthetic"]
    assert synthetic.groupby("class_name").size().to_dict() == {"one": 4, "two": 2}
    rows = {r["key"]: r for r in read_rows(balanced).to_pylist()}
    accepted = {k for k, r in rows.items() if r["status"] == "accepted"}
    assert set(synthetic.key) == accepted == set(_clips(balanced))
    prompts = {c: f"a handwritten digit {i}" for i, c in enumerate(COUNTS)}
    for key in synthetic.key:  # text conditioning: each clip from its class's prompt
        assert rows[key]["prompt"] == prompts[rows[key]["class_name"]], key
    assert set(df.loc[df.source == "real", "reference"]) == {
        f"{n}/{i:03d}.png" for i, (n, _) in enumerate(_samples())
    }


def test_balanced_clip_build_validates_and_every_clip_decodes_as_parquet_states(
    balanced: Path,
) -> None:
    _assert_validates(balanced)
    _assert_clips_match_parquet(balanced)
