"""Builds on an S3-compatible object store (moto's server on 127.0.0.1, started here).

Build, kill -9 + resume, publish with the LATEST pointer, validate and extend, all on
`s3://` URLs; a reader following LATEST never sees a partial build; credentials stay out of
every output and log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import synthgen
from synthgen.pipelines.build import BuildError, run_build
from synthgen.pipelines.cli import main as cli_main
from synthgen.pipelines.remote import (
    LOCK_OBJECT,
    POINTER,
    Mirror,
    RemoteLock,
    prune_remote,
    pull_build,
    source_location,
)
from synthgen.storage.store import StoreError, open_store
from synthgen.validators.corpus import validate_dir
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import S3_SECRET as SECRET
from tests.conftest import read_rows, run_cli, tiny_recipe_dict, write_recipe


def _objects(prefix: str) -> dict[str, bytes]:
    store = open_store(f"s3://{BUCKET}/{prefix}")
    return {n: store.read_bytes(n) for n in store.listing()}


def _corpus(out: Path) -> dict[str, tuple]:
    rows = read_rows(out).to_pylist()
    return {r["key"]: (r["seed"], r["image_sha256"], r["status"]) for r in rows}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("recipe")
    data = tiny_recipe_dict(model_dir, count_per_class=2)
    data["output"] = {"shard_size": 4}
    return write_recipe(tmp / "recipe.yaml", data)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory, recipe: Path) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    run_build(recipe, out, show_progress=False)
    return out


def test_build_to_s3_equals_a_local_build_and_validates(
    s3: dict[str, str], recipe: Path, local_build: Path
) -> None:
    result = run_build(recipe, f"s3://{BUCKET}/plain", show_progress=False)
    assert result.location == f"s3://{BUCKET}/plain"
    objects = _objects("plain")
    local = {p.name: p.read_bytes() for p in local_build.iterdir() if p.suffix == ".tar"}
    assert local and {n: b for n, b in objects.items() if n.endswith(".tar")} == local
    assert "manifest.json" in objects and LOCK_OBJECT not in objects
    assert not any(n.startswith(".synthgen/staging") for n in objects)
    copy = pull_build(f"s3://{BUCKET}/plain")
    assert _corpus(copy) == _corpus(local_build)
    corpus = synthgen.load(f"s3://{BUCKET}/plain", verify=True)
    assert corpus.manifest.recipe_hash == result.manifest.recipe_hash
    report = validate_dir(copy)
    assert report.ok, report.failures

    # a second build into the same location needs --resume, and then does nothing
    with pytest.raises(BuildError, match="not empty; pass --resume"):
        run_build(recipe, f"s3://{BUCKET}/plain", show_progress=False)
    again = run_build(recipe, f"s3://{BUCKET}/plain", resume=True, show_progress=False)
    assert again.generated_now == 0


def test_publish_kill_resume_validate_and_extend_on_s3(
    s3: dict[str, str],
    recipe: Path,
    tmp_path: Path,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    root = f"s3://{BUCKET}/published"
    run_build(recipe, publish_root=root, show_progress=False)
    pointer = json.loads(_objects("published")[POINTER])
    parent_build = pointer["build"]
    parent_objects = _objects(f"published/{parent_build}")

    # an extension killed just before its manifest: LATEST still names the parent
    grown = tiny_recipe_dict(model_dir, count_per_class=3)
    grown["output"] = {"shard_size": 4}
    grown_recipe = write_recipe(tmp_path / "grown.yaml", grown)
    args = ["build", str(grown_recipe), "--publish", root, "--extend", "--no-progress"]
    killed = _cli(args, {"SYNTHGEN_FAULT": "manifest:*:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads(_objects("published")[POINTER])["build"] == parent_build
    reader = pull_build(root)  # what a reader following LATEST gets: the complete parent
    assert validate_dir(reader).ok

    # resumed from the store alone (a fresh cache: another machine); every shard reused
    monkeypatch.setenv("SYNTHGEN_CACHE_DIR", str(tmp_path / "other-machine"))
    resumed = run_build(
        grown_recipe, publish_root=root, extend="latest", resume=True, show_progress=False
    )
    assert resumed.generated_now == 0 and resumed.reused_shards == [0, 1, 2]
    pointer = json.loads(_objects("published")[POINTER])
    assert pointer["build"] != parent_build
    child = _objects(f"published/{pointer['build']}")
    for name, data in parent_objects.items():
        if name.endswith((".tar", ".parquet")):
            assert child[name] == data, f"{name} changed in the extension"
    assert hashlib.sha256(child["manifest.json"]).hexdigest() == pointer["manifest_sha256"]
    manifest = json.loads(child["manifest.json"])
    assert (
        manifest["lineage"]["recipe_hashes"][0]
        == json.loads(parent_objects["manifest.json"])["recipe_hash"]
    )
    assert manifest["counts"]["accepted"] + manifest["counts"]["rejected"] == 9
    trend = json.loads(child["report.json"])["trend"]  # against the build LATEST named
    assert trend is not None and Path(trend["previous"]["output"]).name == parent_build[7:]

    assert cli_main(["validate", root]) == 0
    assert "valid (" in capsys.readouterr().out

    # prune keeps the newest build and the one LATEST names; the parent goes
    removed = prune_remote(root, keep=1)
    assert removed == [f"{root}/{parent_build}"]
    assert not _objects(f"published/{parent_build}")
    assert _objects(f"published/{pointer['build']}") == child

    # the secret key is in none of the objects and none of the logs
    everything = b"".join(_objects("published").values())
    for text in (killed.stdout, killed.stderr, caplog.text, *capsys.readouterr()):
        assert SECRET not in text
    assert SECRET.encode() not in everything


def test_lock_object_refuses_a_second_writer_and_credentials_in_urls(
    s3: dict[str, str], recipe: Path
) -> None:
    store = open_store(f"s3://{BUCKET}/locked")
    with (
        RemoteLock(store, "output location"),
        pytest.raises(BuildError, match="another synthgen process"),
    ):
        run_build(recipe, f"s3://{BUCKET}/locked", show_progress=False)
    assert LOCK_OBJECT not in store.listing()  # released
    with pytest.raises(StoreError, match="credentials inside a storage URL are refused") as exc:
        run_build(recipe, f"s3://AKIATESTKEY:{SECRET}@{BUCKET}/x", show_progress=False)
    assert SECRET not in str(exc.value)


def test_sources_on_s3_are_read_through_the_cache(s3: dict[str, str], tmp_path: Path) -> None:
    store = open_store(f"s3://{BUCKET}/sources/digits")
    for i in range(3):
        store.write_bytes(f"shard-{i:05d}.tar", f"tar {i}".encode())
    store.write_bytes("labels.parquet", b"parquet bytes")
    single = Path(source_location(tmp_path, f"s3://{BUCKET}/sources/digits/labels.parquet"))
    assert single.read_bytes() == b"parquet bytes"
    pattern = source_location(tmp_path, f"s3://{BUCKET}/sources/digits/shard-{{00000..00002}}.tar")
    folder, rest = pattern.rsplit("/", 1)
    assert rest == "shard-{00000..00002}.tar"
    assert sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith(".")) == [
        *(f"shard-{i:05d}.tar" for i in range(3)),
    ], "a pattern fetches only the objects it matches"
    # an object replaced by one of the same size is fetched again; a deleted one is gone
    store.write_bytes("shard-00001.tar", b"TAR 1")
    store.delete(["shard-00002.tar"])
    folder = source_location(tmp_path, f"s3://{BUCKET}/sources/digits")
    assert (Path(folder) / "shard-00001.tar").read_bytes() == b"TAR 1"
    assert not (Path(folder) / "shard-00002.tar").exists()
    with pytest.raises(BuildError, match="no such object or prefix"):
        source_location(tmp_path, f"s3://{BUCKET}/sources/nothing-here")


def test_a_lock_left_by_a_killed_process_is_taken_over_and_a_lost_lock_stops_uploads(
    s3: dict[str, str], tmp_path: Path
) -> None:
    store = open_store(f"s3://{BUCKET}/stale")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    left = {"owner": "x", "host": socket.gethostname(), "pid": int(gone.stdout), "heartbeat": 0}
    store.write_bytes(LOCK_OBJECT, json.dumps(left).encode())
    with RemoteLock(store, "output location") as lock:
        assert json.loads(store.read_bytes(LOCK_OBJECT))["owner"] == lock.owner
        (tmp_path / "a.txt").write_text("a")
        mirror = Mirror(store, tmp_path, lock)
        assert mirror.push() == 1
        assert lock.beat()  # still ours: refreshed
        taken = {"owner": "other", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
        store.write_bytes(LOCK_OBJECT, json.dumps(taken).encode())  # another process took it
        assert not lock.beat() and lock.lost
        (tmp_path / "b.txt").write_text("b")
        with pytest.raises(BuildError, match="taken over by another process"):
            mirror.push()
    assert "b.txt" not in store.listing()
