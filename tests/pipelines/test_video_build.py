"""Clip builds end to end: every video family through `run_build`, PyAV reading each clip
as its Parquet row states; kill -9 and resume equal a clean build byte for byte; the same
recipe twice gives the same mp4 bytes; a clip build validates and publishes; a frozen clip
and a flickering clip are rejected with their reasons."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from synthgen.generators.random_pipelines import save_snapshot
from synthgen.pipelines.build import run_build
from synthgen.validators.corpus import validate_dir
from tests.conftest import read_rows, write_recipe
from tests.video import CLIPS, FPS, clip_recipe
from tests.video import pyav_frames as _pyav

# the manifest's fields that say when a build ran, not what it made
WHEN = {"created_at", "finished_at"}


@pytest.fixture(scope="module")
def video_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny random model folder, saved on first use, shared by the module."""
    return {"root": tmp_path_factory.mktemp("video-models")}


def _folder(models: dict[str, Path], family: str) -> Path:
    if family not in models:
        models[family] = save_snapshot(family, models["root"] / family, seed=0)
    return models[family]


_BUILT: dict[str, Path] = {}


def _built(models: dict[str, Path], family: str, model_dir: Path) -> Path:
    """The family's clean build of `clip_recipe`, made once per module (read, never change);
    its recipe is `out.parent / "recipe.yaml"`."""
    if family not in _BUILT:
        root = models["root"] / f"build-{family}"
        root.mkdir()
        data = clip_recipe(_folder(models, family), family, model_dir)
        run_build(write_recipe(root / "recipe.yaml", data), root / "out", show_progress=False)
        _BUILT[family] = root / "out"
    return _BUILT[family]


def _members(out: Path) -> dict[str, bytes]:
    """Every tar member of a build (or of one tar) by name."""
    found: dict[str, bytes] = {}
    for tar in sorted(out.glob("*.tar")) if out.is_dir() else [out]:
        with tarfile.open(tar) as tf:
            for m in tf:
                member = tf.extractfile(m)
                assert member is not None
                found[m.name] = member.read()
    return found


def _clips(out: Path) -> dict[str, bytes]:
    return {n.partition(".")[0]: d for n, d in _members(out).items() if n.endswith(".mp4")}


def _without_when(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_when(v) for k, v in value.items() if k not in WHEN}
    if isinstance(value, list):
        return [_without_when(v) for v in value]
    return value


def _manifest(out: Path) -> Any:
    """The manifest minus when the build ran and the hashes of its shard files (the files
    hold the build's start time, `created_at`; `assert_same_build` compares them)."""
    manifest = _without_when(json.loads((out / "manifest.json").read_text()))
    for shard in manifest["shards"]:
        shard["files"] = {name: f["bytes"] for name, f in shard["files"].items()}
    return manifest


def assert_same_build(out: Path, clean: Path) -> None:
    """`out` is `clean` byte for byte but for the build's start time (`created_at`, in each
    sidecar and Parquet row): the tars equal once `out`'s start time is written as `clean`'s,
    the Parquet tables equal without it, the manifests equal without when they ran."""
    import pyarrow.parquet as pq

    def started(build: Path) -> str:
        return str(json.loads((build / "manifest.json").read_text())["created_at"])

    ours, theirs = (f'"created_at": "{started(b)}"'.encode() for b in (out, clean))
    for suffix in ("*.tar", "*.parquet"):
        names = sorted(p.name for p in clean.glob(suffix))
        assert names and sorted(p.name for p in out.glob(suffix)) == names
    for tar in sorted(clean.glob("*.tar")):
        data = (out / tar.name).read_bytes()
        sidecars = [n for n in _members(out / tar.name) if n.endswith(".json")]
        assert sidecars and data.count(ours) == len(sidecars), tar.name
        assert data.replace(ours, theirs) == tar.read_bytes(), tar.name
    for name in sorted(p.name for p in clean.glob("*.parquet")):
        a, b = pq.read_table(out / name), pq.read_table(clean / name)
        assert a.schema.metadata == b.schema.metadata, name
        assert len(set(a.column("created_at").to_pylist())) == 1
        assert a.drop_columns(["created_at"]).equals(b.drop_columns(["created_at"])), name
    assert _manifest(out) == _manifest(clean)
    assert validate_dir(out).ok


# 1. every family, end to end ------------------------------------------------------------------


@pytest.mark.parametrize("family", list(CLIPS))
def test_each_video_family_builds_clips_pyav_reads_as_the_parquet_states(
    family: str, video_models: dict[str, Path], model_dir: Path
) -> None:
    out = _built(video_models, family, model_dir)
    _, height, width, frames = CLIPS[family]
    rows = {r["key"]: r for r in read_rows(out).to_pylist()}
    assert len(rows) == 4
    assert {r["shard"] for r in rows.values()} == {0, 1}
    clips = _clips(out)
    accepted = {k for k, r in rows.items() if r["status"] == "accepted"}
    assert accepted and set(clips) == accepted
    for key, data in clips.items():
        row = rows[key]
        assert (row["frames"], row["fps"], row["codec"]) == (frames, FPS, "mp4")
        assert (row["height"], row["width"]) == (height, width)
        assert row["duration_s"] == pytest.approx(frames / FPS)
        decoded, rate = _pyav(data)
        assert decoded.shape == (frames, height, width, 3)
        assert rate == FPS
        assert row["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


# 2. kill -9 and resume ------------------------------------------------------------------------


def test_kill_9_half_way_then_resume_equals_the_clean_build_byte_for_byte(
    tmp_path: Path,
    video_models: dict[str, Path],
    model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean = _built(video_models, "animatediff", model_dir)
    recipe = clean.parent / "recipe.yaml"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe), "-o", str(out)]
    killed = subprocess.run(
        [*cmd, "--no-progress"],
        env={**os.environ, "SYNTHGEN_FAULT": "write:00001:kill"},  # shard 0 written, 1 not
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "00000.tar").is_file() and not (out / "00001.tar").exists()
    assert not (out / "manifest.json").exists()

    from synthgen.pipelines import cli

    capsys.readouterr()
    assert cli.main(["build", str(recipe), "-o", str(out), "--resume", "--no-progress"]) == 0
    said = capsys.readouterr().out  # the summary counts clips, not images
    assert "2 generated in" in said and "reused 1 shard(s)" in said, said
    assert "clips/s: clips generated by this run per wall-clock second" in said, said
    assert_same_build(out, clean)


# 3. deterministic bytes -----------------------------------------------------------------------


def test_the_same_recipe_built_twice_gives_identical_mp4_bytes(
    tmp_path: Path, video_models: dict[str, Path], model_dir: Path
) -> None:
    first = _built(video_models, "animatediff", model_dir)
    second = tmp_path / "again"
    run_build(first.parent / "recipe.yaml", second, show_progress=False)
    clips = _clips(first)
    assert clips and _clips(second) == clips
    assert len(set(clips.values())) == len(clips), "every clip its own bytes"
    assert_same_build(second, first)


# 4. validate and publish ----------------------------------------------------------------------


def test_a_clip_build_validates_and_publishes(
    tmp_path: Path, video_models: dict[str, Path], model_dir: Path
) -> None:
    from synthgen.pipelines import cli

    clean = _built(video_models, "animatediff", model_dir)
    report = validate_dir(clean)
    assert report.ok and report.failures == []
    assert cli.main(["validate", str(clean)]) == 0

    broken = tmp_path / "broken"  # a changed clip fails validation: the check can fail
    shutil.copytree(clean, broken)
    tar = broken / "00000.tar"
    with tarfile.open(tar) as tf:
        mp4 = next(m for m in tf if m.name.endswith(".mp4"))
    data = bytearray(tar.read_bytes())
    data[mp4.offset_data + mp4.size // 2] ^= 0xFF  # one byte in the middle of a clip
    tar.write_bytes(bytes(data))
    failures = validate_dir(broken).failures
    assert failures and f"00000.tar: {mp4.name.partition('.')[0]} image differs" in failures[0]

    root = tmp_path / "pub"
    result = run_build(clean.parent / "recipe.yaml", publish_root=root, show_progress=False)
    assert result.output.parent == root / "builds"
    assert (root / "latest").resolve() == result.output
    assert validate_dir(root / "latest").ok
    assert _clips(root / "latest") == _clips(clean)
    assert _manifest(root / "latest")["status"] == "complete"


# 5. frozen and flickering clips ---------------------------------------------------------------

FROZEN, FLICKER = "tiny-zero-000000", "tiny-one-000001"


def _defective(original: Any) -> Any:
    """`call_model` whose clip for FROZEN repeats its first frame, and for FLICKER
    alternates its first frame with that frame's negative."""

    import torch

    def call(pipe: Any, settings: Any, call_: Any) -> Any:
        frames = original(pipe, settings, call_)
        with torch.inference_mode():
            frames = frames.clone()
            for i, request in enumerate(call_.requests):
                first = frames[i, :1].clone()
                if request.key == FROZEN:
                    frames[i] = first.expand_as(frames[i])
                elif request.key == FLICKER:
                    frames[i, 0::2] = first
                    frames[i, 1::2] = 1.0 - first
        return frames

    return call


def test_a_frozen_and_a_flickering_clip_are_rejected_with_their_reasons(
    tmp_path: Path,
    video_models: dict[str, Path],
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from synthgen.pipelines import generate

    clean = _built(video_models, "animatediff", model_dir)
    monkeypatch.setattr(generate, "call_model", _defective(generate.call_model))
    out = tmp_path / "out"
    run_build(clean.parent / "recipe.yaml", out, show_progress=False)  # default checks
    rows = {r["key"]: r for r in read_rows(out).to_pylist()}
    plain = {r["key"]: r for r in read_rows(clean).to_pylist()}
    assert set(rows) == set(plain) and {FROZEN, FLICKER} <= set(rows)
    assert (rows[FROZEN]["status"], rows[FROZEN]["reject_reason"]) == ("rejected", "frozen_clip")
    assert rows[FROZEN]["motion"] < 2e-4 < plain[FROZEN]["motion"]
    assert (rows[FLICKER]["status"], rows[FLICKER]["reject_reason"]) == ("rejected", "flicker")
    assert rows[FLICKER]["max_spike"] > 3.0 >= plain[FLICKER]["max_spike"]
    for key in set(rows) - {FROZEN, FLICKER}:  # the other clips as the clean build made them
        same = ("status", "reject_reason", "image_sha256")
        assert [rows[key][c] for c in same] == [plain[key][c] for c in same], key
    assert not set(_clips(out)) & {FROZEN, FLICKER}


def test_thresholds_set_in_the_recipe_reject_every_clip_by_name(
    tmp_path: Path, video_models: dict[str, Path], model_dir: Path
) -> None:
    """`frozen_clip` at its maximum rejects every clip as frozen; with it off, `flicker`
    with `spike: 0` rejects every clip whose frames change at all as flickering."""
    clean = _built(video_models, "animatediff", model_dir)
    base = clip_recipe(_folder(video_models, "animatediff"), "animatediff", model_dir)
    for name, checks in [
        ("frozen_clip", {"frozen_clip": {"absolute": 1.0}}),
        ("flicker", {"frozen_clip": None, "flicker": {"absolute": None, "spike": 0.0}}),
    ]:
        data = copy.deepcopy(base)
        data["checks"] |= checks
        out = tmp_path / name
        run_build(write_recipe(tmp_path / f"{name}.yaml", data), out, show_progress=False)
        rows = read_rows(out).to_pylist()
        assert len(rows) == 4
        assert {(r["status"], r["reject_reason"]) for r in rows} == {("rejected", name)}
        assert _clips(out) == {}
    plain = read_rows(clean).to_pylist()
    assert all(r["motion"] < 1.0 and r["max_spike"] > 0.0 for r in plain)
