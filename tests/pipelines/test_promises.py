"""The design's promises, each held by a test that can fail (see the README's guarantees)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthgen.generators.handler import generate_batch
from synthgen.generators.model_folder import ModelFolderError, load_pipeline
from synthgen.generators.planning import plan
from synthgen.pipelines.build import run_build
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.schemas.recipe import load_recipe
from synthgen.storage.atomic import TMP_MARK
from tests.conftest import SPLIT_THRESHOLD, read_rows, tiny_recipe_dict, write_recipe


def _recipe(tmp: Path, model_dir: Path, **changes: object) -> Path:
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}, "near_duplicate": None}
    data.update(changes)
    return write_recipe(tmp / "recipe.yaml", data)


def _corpus(out: Path) -> dict[str, tuple]:
    """What must match a clean build, sample for sample (created_at aside)."""
    rows = read_rows(out).to_pylist()
    return {r["key"]: (r["seed"], r["image_sha256"], r["status"], r["reject_reason"]) for r in rows}


def _tar_keys(out: Path) -> list[str]:
    keys = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            keys += [m.name for m in tf]
    return keys


@pytest.fixture
def clean(split_build: Path) -> Path:
    """The clean build of `_recipe` (near_duplicate None is the default, so the same recipe
    hash as the shared split build): read it, never change it."""
    return split_build


def _cli(args: list[str], env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "synthgen.pipelines.cli", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _assert_final_names_parse(out: Path) -> None:
    for p in out.iterdir():
        if TMP_MARK in p.name or p.is_dir():
            continue
        if p.suffix == ".tar":
            with tarfile.open(p) as tf:
                for m in tf:
                    assert tf.extractfile(m).read() is not None
        elif p.suffix == ".parquet":
            pq.read_table(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        else:
            raise AssertionError(f"unexpected file {p.name}")


# 1. retried bundles ------------------------------------------------------------------------


def test_retried_bundle_neither_duplicates_nor_loses(
    tmp_path: Path, model_dir: Path, clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, model_dir)
    monkeypatch.setenv("SYNTHGEN_FAULT", f"check:tiny-one-000001:raise:{tmp_path / 'fired'}")
    run_build(
        recipe,
        tmp_path / "retried",
        beam_args=["--runner=BundleBasedDirectRunner"],
        show_progress=False,
    )
    assert (tmp_path / "fired").exists(), "the fault must have fired once"
    assert _corpus(tmp_path / "retried") == _corpus(clean)
    assert _tar_keys(tmp_path / "retried") == _tar_keys(clean)


def test_repeated_bundles_give_the_same_corpus(
    tmp_path: Path, model_dir: Path, clean: Path
) -> None:
    run_build(
        _recipe(tmp_path, model_dir),
        tmp_path / "repeat",
        beam_args=["--runner=BundleBasedDirectRunner", "--direct_runner_bundle_repeat=2"],
        show_progress=False,
    )
    assert _corpus(tmp_path / "repeat") == _corpus(clean)
    assert _tar_keys(tmp_path / "repeat") == _tar_keys(clean)


def test_exhausted_retries_fail_truthfully(tmp_path: Path, model_dir: Path) -> None:
    recipe = _recipe(tmp_path, model_dir, count_per_class=1)  # one shard, tiny-two-000000 in it
    proc = _cli(
        [
            "build",
            str(recipe),
            "-o",
            str(tmp_path / "out"),
            "--no-progress",
            "--",
            "--runner=BundleBasedDirectRunner",
        ],
        env={"SYNTHGEN_FAULT": "check:tiny-two-000000:raise"},
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "injected fault" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


# 2 + 3. crashes and resume -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        "generate:tiny-zero-000000:kill",  # first sample
        "check:tiny-one-000002:kill",  # mid-shard, every image generated
        "rename:00001.tar:kill",  # a shard's tar complete under its temporary name
        "write:00002:kill",  # after other shards closed
        "rename:manifest.json:kill",  # during the final manifest write
    ],
)
def test_sigkill_leaves_no_partial_file_and_resume_equals_clean(
    tmp_path: Path, model_dir: Path, clean: Path, fault: str
) -> None:
    recipe = _recipe(tmp_path, model_dir)
    out = tmp_path / "out"
    proc = _cli(
        ["build", str(recipe), "-o", str(out), "--no-progress"], env={"SYNTHGEN_FAULT": fault}
    )
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    _assert_final_names_parse(out)
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}

    result = run_build(recipe, out, resume=True, show_progress=False)
    assert sorted(result.reused_shards) == sorted(int(n[:5]) for n in finished)
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    assert _corpus(out) == _corpus(clean)
    assert not list(out.glob(f"*{TMP_MARK}*"))


def test_changed_recipe_refuses_to_resume(tmp_path: Path, model_dir: Path) -> None:
    recipe = _recipe(tmp_path, model_dir, count_per_class=2)  # two shards: 5 and 1 samples
    proc = _cli(
        ["build", str(recipe), "-o", str(tmp_path / "out"), "--no-progress"],
        env={"SYNTHGEN_FAULT": "write:00001:kill"},
    )
    proc.communicate(timeout=600)
    proc = _cli(
        ["build", str(recipe), "-o", str(tmp_path / "out"), "--resume", "--set", "sampling.steps=3"]
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert "recipe changed since this build started" in err


# 4. versioned publishing ---------------------------------------------------------------------


def test_publish_never_clobbers_a_complete_build(tmp_path: Path, model_dir: Path) -> None:
    recipe = _recipe(tmp_path, model_dir, count_per_class=2)  # two shards: 5 and 1 samples
    root = tmp_path / "pub"
    first = run_build(recipe, publish_root=root, show_progress=False)
    assert (root / "latest").resolve() == first.output
    before = {p.name: p.read_bytes() for p in first.output.iterdir() if p.is_file()}

    # a second version crashes: latest still points at the first, untouched
    proc = _cli(
        ["build", str(recipe), "--publish", str(root), "--set", "seed=9", "--no-progress"],
        env={"SYNTHGEN_FAULT": "write:00001:kill"},
    )
    proc.communicate(timeout=600)
    assert (root / "latest").resolve() == first.output
    assert {p.name: p.read_bytes() for p in first.output.iterdir() if p.is_file()} == before

    # resuming finishes the second version in its own folder, then swaps latest
    second = run_build(
        recipe, publish_root=root, overrides=["seed=9"], resume=True, show_progress=False
    )
    assert second.output != first.output and second.output.parent == root / "builds"
    assert (root / "latest").resolve() == second.output
    assert json.loads((root / "latest" / "manifest.json").read_text())["recipe"]["seed"] == 9


# 5. determinism ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe_and_requests(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    recipe_path = _recipe(tmp_path_factory.mktemp("det"), model_dir)
    recipe, base = load_recipe(recipe_path)
    resolved = resolve(recipe, base)
    settings_ = generation_settings(resolved)
    pipe = load_pipeline(resolved.model_path, settings_.scheduler, "float32", "cpu", 1)
    requests = plan(recipe)[:7]
    reference = {s.request.key: s.image_sha256 for s in generate_batch(pipe, settings_, requests)}
    return pipe, settings_, requests, reference


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_image_bytes_do_not_depend_on_order_or_batching(pipe_and_requests, data) -> None:
    pipe, settings_, requests, reference = pipe_and_requests
    order = data.draw(st.permutations(requests))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(order) - 1), max_size=3)))
    got = {}
    for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
        for s in generate_batch(pipe, settings_, order[lo:hi]):
            got[s.request.key] = s.image_sha256
    assert got == reference


# 7. hostile input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda d: (
                (d / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
                (d / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04."),
            ),
            "only pickle-based weights",
        ),
        (
            lambda d: (d / "pipeline.py").write_text("import os; os.system('touch /tmp/pwned')"),
            "custom pipeline code is never run",
        ),
        (
            lambda d: (d / "model_index.json").write_text(
                json.dumps({"_class_name": "MyPipeline", "unet": ["mymodule", "UNet"]})
            ),
            "is not a diffusers pipeline class",
        ),
        (
            lambda d: (d / "model_index.json").write_text(
                json.dumps(
                    {
                        **json.loads((d / "model_index.json").read_text()),
                        "unet": ["mymodule", "UNet"],
                    }
                )
            ),
            "only diffusers, transformers components are loaded",
        ),
        (
            lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
            "no .safetensors weights",
        ),
    ],
)
def test_hostile_model_folders_are_refused_before_anything_is_written(
    tmp_path: Path, model_dir: Path, tamper, message: str
) -> None:
    bad = tmp_path / "sd"
    shutil.copytree(model_dir / "sd", bad)
    tamper(bad)
    data = tiny_recipe_dict(model_dir)
    data["model"]["path"] = str(bad)
    recipe = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(ModelFolderError, match=message):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    assert not Path("/tmp/pwned").exists()


# 8. secrets ---------------------------------------------------------------------------------------


def test_tokens_never_reach_outputs_or_logs(tmp_path: Path, model_dir: Path) -> None:
    env_secret, arg_secret = "hf_envSECRETtoken1234567", "hf_argSECRETtoken7654321"
    # one sample a class, every one scored and accepted: shard 0 has a sidecar to read
    checks = {"clip_score": {"absolute": -1.0}}
    recipe = _recipe(tmp_path, model_dir, count_per_class=1, checks=checks)
    out = tmp_path / "out"
    proc = _cli(
        [
            "build",
            str(recipe),
            "-o",
            str(out),
            "--no-progress",
            "--",
            f"--labels=token={arg_secret}",
        ],
        env={
            "HF_TOKEN": env_secret,
            "HUGGING_FACE_HUB_TOKEN": env_secret,
            "AWS_SECRET_ACCESS_KEY": env_secret,
        },
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    for secret in (env_secret, arg_secret):
        assert secret not in stdout and secret not in stderr
        for p in out.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p
    prov = json.loads(next(iter(_tar_json(out / "00000.tar"))))
    from synthgen.schemas.records import PROVENANCE_FIELDS

    assert set(prov) == {*PROVENANCE_FIELDS, "scores"}


def _tar_json(path: Path):
    with tarfile.open(path) as tf:
        for m in tf:
            if m.name.endswith(".json"):
                yield tf.extractfile(m).read()


# 9. truthful exit status -------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_non_zero_without_manifest(
    tmp_path: Path, model_dir: Path, sig: int, code: int
) -> None:
    recipe = _recipe(tmp_path, model_dir, count_per_class=200)
    out = tmp_path / "out"
    proc = _cli(["build", str(recipe), "-o", str(out)])
    deadline = time.monotonic() + 300
    progress = out / ".synthgen" / "progress"
    # wait until images are being generated, then interrupt
    while time.monotonic() < deadline and not any(
        p.stat().st_size for p in (progress.glob("*.log") if progress.is_dir() else [])
    ):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert not (out / "manifest.json").exists()
