"""Hardening: names from outside stay inside their folder; code in the working directory
never runs.

Every name that arrives from a store listing, a manifest or a `LATEST` pointer is checked
once, in the storage layer (`storage.store.inside`, `schemas.names`), before it becomes a
path; helper processes (the gate's, Beam's workers) start with the working directory off
their module path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import boto3
import pytest
from pydantic import ValidationError

import synthgen
from synthgen.pipelines import runner
from synthgen.pipelines.build import BuildError, run_build
from synthgen.pipelines.remote import POINTER, previous_report, source_location
from synthgen.pipelines.runner import beam_options, pipeline
from synthgen.schemas.manifest import Manifest
from synthgen.storage.store import LocalStore, StoreError, UnsafeNameError, inside, open_store
from tests.conftest import S3_BUCKET, tiny_recipe_dict, write_recipe


def _hostile_keys(prefix: str, target: Path) -> list[str]:
    """Keys under `prefix` that name `target` by `..` segments and by an empty segment."""
    up = "../" * 40
    return [f"{prefix}/{up}{str(target)[1:]}/dotdot", f"{prefix}/{target}/doubleslash"]


def _put(keys: list[str], body: bytes = b"evil") -> None:
    client = boto3.client("s3")
    for key in keys:
        client.put_object(Bucket=S3_BUCKET, Key=key, Body=body)


def _escaped(target: Path) -> list[Path]:
    return [p for p in (target / "dotdot", target / "doubleslash") if p.exists()]


def _upload_build(build: Path, prefix: str) -> None:
    client = boto3.client("s3")
    for path in sorted(build.rglob("*")):
        if path.is_file() and not path.is_symlink():
            key = f"{prefix}/{path.relative_to(build).as_posix()}"
            client.put_object(Bucket=S3_BUCKET, Key=key, Body=path.read_bytes())


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("recipe")
    data = tiny_recipe_dict(model_dir, count_per_class=1)
    return write_recipe(tmp / "recipe.yaml", data)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory, recipe: Path) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    run_build(recipe, out, show_progress=False)
    return out


def test_a_name_that_leaves_its_folder_is_refused_by_the_storage_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    for name in ("../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "a\nb", ""):
        with pytest.raises(UnsafeNameError):
            inside(root, name)
    with pytest.raises(UnsafeNameError, match="symbolic link"):
        inside(root, "link/x")
    assert inside(root, "builds/b1/00000.tar") == root / "builds/b1/00000.tar"
    store = LocalStore(root)
    with pytest.raises(UnsafeNameError):
        store.write_bytes("../written", b"x")
    with pytest.raises(UnsafeNameError):
        store.read_bytes("link/../../outside/x")
    assert not (tmp_path / "written").exists()


def test_a_manifest_naming_a_file_outside_its_build_does_not_load(
    tmp_path: Path, local_build: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_build, out)
    data = json.loads((out / "manifest.json").read_text())
    files = data["shards"][0]["files"]
    files["../../outside.tar"] = files.pop("00000.tar")
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="must stay inside"):
        Manifest.model_validate(data)
    with pytest.raises(ValidationError):
        synthgen.load(out, verify=True)


def test_pulling_a_build_with_a_hostile_key_writes_nothing_outside_the_cache(
    s3: dict[str, str], tmp_path: Path, local_build: Path
) -> None:
    _upload_build(local_build, "hostile-pull")
    _put(_hostile_keys("hostile-pull", tmp_path))
    with pytest.raises(StoreError, match="refused the name"):
        synthgen.load(f"s3://{S3_BUCKET}/hostile-pull")
    assert _escaped(tmp_path) == []


def test_resuming_on_a_prefix_with_a_hostile_key_writes_nothing_outside(
    s3: dict[str, str], tmp_path: Path, recipe: Path, local_build: Path
) -> None:
    _upload_build(local_build, "hostile-resume")
    _put(_hostile_keys("hostile-resume", tmp_path))
    with pytest.raises(StoreError, match="refused the name"):
        run_build(recipe, f"s3://{S3_BUCKET}/hostile-resume", resume=True, show_progress=False)
    assert _escaped(tmp_path) == []


def test_a_source_prefix_with_a_hostile_key_writes_nothing_outside(
    s3: dict[str, str], tmp_path: Path, local_build: Path
) -> None:
    client = boto3.client("s3")
    client.put_object(
        Bucket=S3_BUCKET, Key="hostile-src/00000.tar", Body=(local_build / "00000.tar").read_bytes()
    )
    _put(_hostile_keys("hostile-src", tmp_path))
    with pytest.raises(StoreError, match="refused the name"):
        source_location(tmp_path, f"s3://{S3_BUCKET}/hostile-src/{{00000..00000}}.tar")
    assert _escaped(tmp_path) == []


def test_a_latest_pointer_outside_builds_is_refused(s3: dict[str, str], tmp_path: Path) -> None:
    root = open_store(f"s3://{S3_BUCKET}/hostile-root")
    up = "../" * 40
    for build in (f"builds/{up}{str(tmp_path)[1:]}", "builds/a/../../..", "builds//x"):
        root.write_bytes(POINTER, json.dumps({"build": build}).encode())
        with pytest.raises(BuildError, match="must stay inside its root"):
            previous_report(root, "mine")
        with pytest.raises(BuildError, match="must stay inside its root"):
            synthgen.load(root.url)
    assert list(tmp_path.iterdir()) == []


# -- code in the working directory -------------------------------------------------------


def _plant(cwd: Path, marker: Path) -> None:
    """Modules that record it when they are imported from `cwd`."""
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (cwd / "great_expectations.py").write_text(code)
    (cwd / "synthgen").mkdir()
    (cwd / "synthgen" / "__init__.py").write_text(code)


def test_a_build_never_imports_modules_from_the_working_directory(
    tmp_path: Path, recipe: Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "imported.txt"
    _plant(cwd, marker)
    command = Path(sys.executable).parent / "synthgen"  # the installed console script
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["SYNTHGEN_GATE_PROCESS"] = "1"  # the gate runs in its own process
    done = subprocess.run(
        [str(command), "build", str(recipe), "--output", str(tmp_path / "out")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not marker.exists(), marker.read_text()


def test_beam_worker_processes_leave_the_working_directory_off_their_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planted_in_cwd.py").write_text("")
    record = str(tmp_path / "probe.txt")

    def probe(element: int) -> int:  # a local function: pickled by value for the worker
        import importlib.util
        import os

        found = importlib.util.find_spec("planted_in_cwd") is not None
        with open(record, "w") as f:
            f.write(f"{os.getpid()} {'imported' if found else 'not found'}")
        return element

    options = beam_options(["--direct_running_mode=multi_processing", "--direct_num_workers=1"])
    p = pipeline(options)
    _ = p | beam.Create([0]) | beam.Map(probe)
    runner._run(p)  # as a build runs each of its pipelines
    assert "PYTHONSAFEPATH" not in os.environ, "the caller's environment is put back"
    pid, found = Path(record).read_text().split(" ", 1)
    assert int(pid) != os.getpid(), "the probe ran in a worker process"
    assert found == "not found"
