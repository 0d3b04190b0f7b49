from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from synthgen.pipelines.build import BuildError, run_build
from synthgen.pipelines.runcontext import RunContext
from synthgen.schemas.recipe import RecipeError
from synthgen.storage.faults import InjectedFault, maybe_fault
from tests.conftest import SPLIT_THRESHOLD, read_rows, tiny_recipe_dict, write_recipe


def _shard_files(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(out.glob("0*")) if not p.name.endswith("_stats.json")
    }


def _images_by_key(out: Path) -> dict[str, str]:
    t = read_rows(out).to_pylist()
    return {r["key"]: r["image_sha256"] for r in t}


@pytest.fixture
def built(split_build: Path) -> Path:
    """One tiny build with some rejects (threshold at about the median tiny-CLIP score),
    shared with other modules: read it, or copy it before changing it."""
    return split_build


def test_layout_and_manifest(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert [s["shard"] for s in manifest["shards"]] == [0, 1, 2]
    assert manifest["counts"]["planned"] == 12
    assert manifest["counts"]["accepted"] + manifest["counts"]["rejected"] == 12
    assert 0 < manifest["counts"]["rejected"] < 12, "threshold should split the tiny build"
    for entry in manifest["shards"]:
        for name, info in entry["files"].items():
            data = (built / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == info["sha256"]
            assert len(data) == info["bytes"]
    assert not list(built.glob(".*tmp-*"))


def test_tar_samples_equal_accepted_parquet_rows(built: Path) -> None:
    rows = read_rows(built).to_pylist()
    assert len({r["key"] for r in rows}) == len(rows) == 12
    accepted = {r["key"]: r for r in rows if r["status"] == "accepted"}
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert all(r["reject_reason"] == "clip_score" for r in rejected)
    assert all(r["rejected_image"]["bytes"] for r in rejected)
    assert all(r["clip_tiny_clip_score"] < SPLIT_THRESHOLD for r in rejected)

    urls = sorted(str(p) for p in built.glob("*.tar"))
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        key = sample["__key__"]
        prov = json.loads(sample["json"])
        assert prov["key"] == key
        assert sample["txt"].decode() == accepted[key]["prompt"]
        assert int(sample["cls"].decode("ascii")) == accepted[key]["class_label"]
        assert hashlib.sha256(sample["png"]).hexdigest() == accepted[key]["image_sha256"]
        assert Image.open(io.BytesIO(sample["png"])).size == (32, 32)
        assert prov["seed"] == accepted[key]["seed"]
        assert prov["scores"]["clip_tiny_clip_score"] == pytest.approx(
            accepted[key]["clip_tiny_clip_score"]
        )
        assert "HF_TOKEN" not in sample["json"].decode()
        seen[key] = True
    assert set(seen) == set(accepted)


def test_tar_members_are_contiguous_with_fixed_mtime(built: Path) -> None:
    with tarfile.open(built / "00000.tar") as tf:
        members = tf.getmembers()
    stems = [m.name.split(".", 1)[0] for m in members]
    # every sample's members are contiguous (samples are in a seeded order, not sorted)
    runs = [stem for i, stem in enumerate(stems) if i == 0 or stems[i - 1] != stem]
    assert len(runs) == len(set(runs)) == len(set(stems))
    assert {m.mtime for m in members} == {0}
    assert {m.name.split(".", 1)[1] for m in members} == {"png", "json", "txt", "cls"}


def test_same_recipe_other_batch_size_and_two_worker_processes(
    built: Path, tmp_path: Path, model_dir: Path
) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"]["clip_score"] = {"absolute": SPLIT_THRESHOLD}
    data["batch_size"] = 3
    data["scoring"]["batch_size"] = 4  # the built recipe's scorer shape: only batching differs
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    run = RunContext(started=time.monotonic() - 1000.0)  # a command line started long ago
    result = run_build(
        recipe,
        tmp_path / "mp",
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        show_progress=False,
        run=run,
    )
    # one clock for the live rate and the summary: both run from the command line's start
    assert run.opened == [(tmp_path / "mp").resolve()] and 1000.0 <= result.seconds < 1600.0
    a = read_rows(built).to_pylist()
    b = read_rows(tmp_path / "mp").to_pylist()
    fields = ("key", "seed", "image_sha256", "status", "prompt")
    assert [tuple(r[f] for f in fields) for r in a] == [tuple(r[f] for f in fields) for r in b]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "colour: unknown field"),
        ({"seed": "x"}, "seed: Input should be a valid integer"),
        ({"count_per_class": -1}, "count_per_class"),
        ({"sampling": {"scheduler": "magic"}}, "sampling.scheduler"),
        ({"model": {"path": "does/not/exist"}}, "model folder not found"),
        ({"scoring": {"clip_model": "nowhere"}}, "CLIP model folder not found"),
    ],
)
def test_bad_input_fails_before_generation_and_leaves_no_output(
    tmp_path: Path, model_dir: Path, change: dict, message: str
) -> None:
    data = tiny_recipe_dict(model_dir)
    data.update(change)
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    with pytest.raises((RecipeError, ValueError), match=message):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_python_tag_recipe_leaves_no_output(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(RecipeError, match="not valid recipe YAML"):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_non_empty_output_refused_without_resume(tmp_path: Path, recipe_file: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not empty; pass --resume"):
        run_build(recipe_file, out, show_progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(BuildError, match="not a synthgen build"):
        run_build(recipe_file, out, resume=True, show_progress=False)


def test_resume_after_interrupted_build_equals_clean_build(
    tmp_path: Path, built: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"]["clip_score"] = {"absolute": SPLIT_THRESHOLD}
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    out = tmp_path / "out"
    monkeypatch.setenv("SYNTHGEN_FAULT", "write:00002:raise")
    with pytest.raises(Exception, match="injected fault"):
        run_build(recipe, out, show_progress=False)
    assert not (out / "manifest.json").exists()
    assert not (out / "00002_stats.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("0000[01]*")}
    assert len(finished) == 6

    monkeypatch.delenv("SYNTHGEN_FAULT")
    with pytest.raises(BuildError, match="recipe changed"):
        run_build(recipe, out, overrides=["seed=99"], resume=True, show_progress=False)
    result = run_build(recipe, out, resume=True, show_progress=False)
    assert result.reused_shards == [0, 1]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0000[01]*")} == finished
    assert _images_by_key(out) == _images_by_key(built)
    clean = {r["key"]: r["status"] for r in read_rows(built).to_pylist()}
    assert {r["key"]: r["status"] for r in read_rows(out).to_pylist()} == clean


def test_resume_redoes_a_corrupted_shard(tmp_path: Path, built: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    (out / "manifest.json").unlink()
    tar = out / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:100])
    result = run_build(built.parent / "recipe.yaml", out, resume=True, show_progress=False)
    assert result.reused_shards == [0, 2]
    # created_at comes from the build's state, so the redone shard is byte-identical
    assert _shard_files(out) == _shard_files(built)


def test_fault_injection_marker_fires_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "fired"
    monkeypatch.setenv("SYNTHGEN_FAULT", f"write:00003:raise:{marker}")
    maybe_fault("write", "00002")
    with pytest.raises(InjectedFault):
        maybe_fault("write", "00003")
    maybe_fault("write", "00003")
    assert marker.exists()


def test_shared_model_copies_give_the_same_images(
    built: Path, tmp_path: Path, model_dir: Path
) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"]["clip_score"] = {"absolute": SPLIT_THRESHOLD}
    data["model"]["copies"] = 2  # Beam's multi-process shared model, two copies
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    run_build(recipe, tmp_path / "copies", show_progress=False)
    assert _images_by_key(tmp_path / "copies") == _images_by_key(built)


def test_shards_smaller_than_a_model_call_are_explained(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from synthgen.pipelines.resolve import resolve
    from synthgen.schemas.recipe import load_recipe

    data = tiny_recipe_dict(model_dir)
    data["output"] = {"shard_size": 1}
    recipe, base = load_recipe(write_recipe(tmp_path / "r.yaml", data))
    with caplog.at_level("WARNING"):
        resolve(recipe, base)
    assert "shard_size 1 is smaller than model.compute_batch 4" in caplog.text
    assert "75% of the model work goes to padding" in caplog.text
