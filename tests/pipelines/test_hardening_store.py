"""Hardening round 3 (issue 31): the object store's lock and pointer, publish roots, source
patterns and URLs, signals, and where messages and lineage say a build is.

Object-store tests run against moto's S3 server on loopback (`s3` in tests/conftest.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from synthgen.pipelines import cli, remote
from synthgen.pipelines.build import run_build
from synthgen.pipelines.output import BuildError
from synthgen.pipelines.remote import (
    LOCK_OBJECT,
    POINTER,
    RemoteLock,
    cache_root,
    pull_build,
    source_location,
)
from synthgen.pipelines.runcontext import RunContext
from synthgen.schemas.recipe import RecipeError, apply_overrides
from synthgen.storage.store import Store, StoreError, open_store
from tests.conftest import S3_BUCKET, tiny_recipe_dict, write_recipe

TAKEOVER_TRIALS = 40


def _store(kind: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> Store:
    if kind == "s3":
        request.getfixturevalue("s3")
        return open_store(f"s3://{S3_BUCKET}/{name}")
    return open_store(tmp_path / name)


def _stale_lock() -> bytes:
    return json.dumps({"owner": "gone", "host": "elsewhere", "pid": 1, "heartbeat": 0}).encode()


# -- item 3: a stale lock is taken over by one process at most ----------------------------
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_simultaneous_takeovers_of_a_stale_lock_never_both_hold_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = _store(kind, tmp_path, request, "contended")
    outcomes: list[list[str]] = []
    for _ in range(TAKEOVER_TRIALS):
        store.write_bytes(LOCK_OBJECT, _stale_lock())
        barrier = threading.Barrier(2)
        locks = [RemoteLock(store, "output location") for _ in range(2)]
        results: list[str] = ["", ""]

        def take(
            i: int,
            locks: list[RemoteLock] = locks,
            results: list[str] = results,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            try:
                locks[i].__enter__()
                results[i] = "held"
            except BuildError as exc:
                results[i] = str(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcomes.append(results)
        holder = json.loads(store.read_bytes(LOCK_OBJECT))["owner"]
        held = [lock for lock, result in zip(locks, results, strict=True) if result == "held"]
        if len(held) == 1:
            assert holder == held[0].owner  # the one that holds it is the one the store names
            held[0].__exit__(None, None, None)
            assert not store.exists(LOCK_OBJECT)  # released by its holder
        for lock in held[1:]:
            lock.__exit__(None, None, None)
        store.delete([LOCK_OBJECT])
    both = sum(r == ["held", "held"] for r in outcomes)
    neither = sum("held" not in r for r in outcomes)
    assert (both, neither) == (0, 0), outcomes
    refusals = [r for pair in outcomes for r in pair if r != "held"]
    assert all("another synthgen process is using" in r for r in refusals), refusals


# -- fixtures: one tiny build published on S3, the parent of an extension -------------------
def _recipe(model_dir: Path, count: int) -> dict:
    data = tiny_recipe_dict(model_dir, count_per_class=count)
    data["classes"] = data["classes"][:2]
    data["output"] = {"shard_size": 4}
    return data


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe") / "recipe.yaml", _recipe(model_dir, 1))


@pytest.fixture(scope="module")
def published(s3: dict[str, str], recipe: Path) -> tuple[str, str]:
    """A publish root on S3 holding one complete build: (root URL, its folder under builds/)."""
    root = f"s3://{S3_BUCKET}/published"
    result = run_build(recipe, publish_root=root, show_progress=False)
    return root, result.location.rsplit("/", 1)[1]


def _pointer(root: str) -> dict:
    return json.loads(open_store(root).read_bytes(POINTER))


# -- items 7 and 18: an extension locks the root before it reads LATEST ---------------------
def test_an_extension_locks_the_root_first_and_never_moves_latest_back(
    published: tuple[str, str],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, parent = published
    store = open_store(root)
    grown = write_recipe(tmp_path / "grown.yaml", _recipe(model_dir, 2))
    events: list[str] = []
    real_pull = remote.pull_build

    def pull_while_others_publish(url: str) -> Path:
        parent_copy = real_pull(url)
        # Just after the parent was read: another synthgen publish must wait for the lock...
        try:
            with RemoteLock(store, "publish root"):
                events.append("another build published meanwhile")
        except BuildError:
            events.append("another build was refused")
        # ...and a writer that ignores the lock moves LATEST anyway.
        store.write_bytes(POINTER, json.dumps({"build": "builds/moved-meanwhile"}).encode())
        return parent_copy

    monkeypatch.setattr(remote, "pull_build", pull_while_others_publish)
    run = RunContext()
    with pytest.raises(BuildError, match="LATEST: moved while this build ran") as refused:
        run_build(grown, publish_root=root, extend="latest", show_progress=False, run=run)
    assert events == ["another build was refused"]
    assert _pointer(root)["build"] == "builds/moved-meanwhile"  # not moved back
    folders = {n.split("/")[1] for n in store.listing("builds")} - {parent}
    assert len(folders) == 1
    child = folders.pop()
    assert f"{root}/builds/{child}" in str(refused.value)

    # item 18: the lineage names the parent's store location, not the cache it was pulled to
    manifest = json.loads(store.read_bytes(f"builds/{child}/manifest.json"))
    assert manifest["lineage"]["parent"] == f"{root}/builds/{parent}"
    # ...and so does the line an interrupt would print for this build
    state = cli._output_state(run)
    assert f"{root}/builds/{child}" in state and str(cache_root()) not in state

    # published later (--resume finds it complete): the line names the store's folder
    monkeypatch.setattr(remote, "pull_build", real_pull)
    code = cli.main(["build", str(grown), "--publish", root, "--resume", "--no-progress"])
    assert code == 0
    assert f"synthgen: published {root}/LATEST -> builds/{child}" in capsys.readouterr().out
    assert _pointer(root)["build"] == f"builds/{child}"


# -- item 8: a publish root that is itself a build is refused by name ----------------------
def test_publishing_into_a_complete_build_is_refused_by_name(
    published: tuple[str, str], recipe: Path
) -> None:
    root, parent = published
    inside_build = f"{root}/builds/{parent}"
    before = open_store(inside_build).listing()
    with pytest.raises(BuildError, match=r"is a build \(manifest.json at its top\)"):
        run_build(recipe, publish_root=inside_build, show_progress=False)
    assert open_store(inside_build).listing() == before  # nothing written, no lock left
    local = pull_build(inside_build)  # a complete build in a local folder
    with pytest.raises(BuildError, match=r"is a build \(manifest.json at its top\)"):
        run_build(recipe, publish_root=local, show_progress=False)
    assert not (local / "latest").exists() and not (local / "builds").exists()


# -- item 12: a remote shard pattern fetches only what it matches --------------------------
def test_a_remote_shard_pattern_downloads_only_its_matches(s3: dict[str, str]) -> None:
    store = open_store(f"s3://{S3_BUCKET}/mixed")
    for name in ("shard-0.tar", "shard-1.tar", "shard-10.tar", "other.bin", "sub/shard-0.tar"):
        store.write_bytes(name, name.encode())
    braces = source_location(Path("/"), f"s3://{S3_BUCKET}/mixed/shard-{{0..0}}.tar")
    folder, pattern = braces.rsplit("/", 1)
    assert pattern == "shard-{0..0}.tar"
    assert sorted(p.name for p in Path(folder).iterdir()) == [".versions.json", "shard-0.tar"]
    star = source_location(Path("/"), f"s3://{S3_BUCKET}/mixed/shard-*.tar")
    folder = star.rsplit("/", 1)[0]
    assert sorted(p.name for p in Path(folder).iterdir()) == [
        ".versions.json",
        "shard-0.tar",
        "shard-1.tar",
        "shard-10.tar",
    ]
    with pytest.raises(BuildError, match="no object matches"):
        source_location(Path("/"), f"s3://{S3_BUCKET}/mixed/none-{{0..3}}.tar")


# -- item 13: URLs are URLs, and their credentials and queries are never echoed ------------
SIG = "sig-0123456789abcdef"
KEY = "AKIAHARDENING31"


def test_a_url_given_with_set_stays_a_url(tmp_path: Path) -> None:
    out = apply_overrides({}, ["reference.source=s3://corpora/ref.parquet"], tmp_path)
    assert out == {"reference": {"source": "s3://corpora/ref.parquet"}}
    out = apply_overrides({}, ["reference.source=ref.parquet"], tmp_path)
    assert out == {"reference": {"source": str(tmp_path / "ref.parquet")}}


@pytest.mark.parametrize(
    "url",
    [
        f"s3://{KEY}:{SIG}@corpora/ref.parquet",
        f"s3://corpora/ref.parquet?X-Amz-Signature={SIG}",
        f"https://example.com/ref.parquet?sig={SIG}",
    ],
)
def test_credentials_and_queries_in_urls_are_refused_and_never_echoed(
    url: str, model_dir: Path, tmp_path: Path
) -> None:
    data = tiny_recipe_dict(model_dir, count_per_class=1)
    data["scoring"] = {**data["scoring"], "scorers": [{"name": "clip"}, {"name": "clip_embedding"}]}
    for recipe, overrides in (
        (data, [f"reference.source={url}"]),  # on the command line
        ({**data, "reference": {"source": url}}, []),  # in the recipe
    ):
        with pytest.raises(RecipeError) as exc:
            run_build(recipe, tmp_path / "out", overrides=overrides, show_progress=False)
        message = str(exc.value)
        assert SIG not in message and KEY not in message
        assert "refused" in message or "not supported" in message
        assert "reference.source" in message  # the field, named
    assert not (tmp_path / "out").exists()
    # the readers' entry point refuses them too, by a name without the secret
    with pytest.raises(StoreError) as refused:
        source_location(tmp_path, url)
    assert SIG not in str(refused.value) and KEY not in str(refused.value)


# -- item 10: an early SIGINT / SIGTERM ends with 130 / 143, never a traceback ------------
def _handlers_installed(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Wait until `proc` catches SIGTERM: `cli.main` has installed its handlers (before
    them, the interpreter's defaults apply; see `cli.main`). Linux: /proc's SigCgt mask."""
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            return  # no /proc here: the delay alone
        if int(fields["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)


@pytest.mark.parametrize(
    ("signum", "delay", "code"),
    [
        (signal.SIGINT, 0.4, 130),
        (signal.SIGTERM, 0.7, 143),
        (signal.SIGINT, 1.0, 130),
        (signal.SIGTERM, 1.3, 143),
        (signal.SIGINT, 1.7, 130),
        (signal.SIGTERM, 2.2, 143),
    ],
)
def test_an_early_signal_ends_the_build_with_its_status_and_no_traceback(
    signum: int, delay: float, code: int, recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synthgen.pipelines.cli",
            "build",
            str(recipe),
            "-o",
            str(out),
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _handlers_installed(proc)  # the delay counts from there, however loaded the machine
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert ("interrupted" if code == 130 else "terminated") in err.splitlines()[-1]


# Each window a signal can land in, made to happen at a known point: the program below runs
# `synthgen ARGS` in a fresh process with one step of the command line wrapped (`where`) so
# that the step sends the signal to its own process and does what a library might with the
# unwinding (`how`).
_AT_A_POINT = """
import os, signal, sys, time
from synthgen.pipelines import cli

def deliver(signum):
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the handler runs (and raises) before this ends
    sys.exit("the signal never arrived")

class Finalized:
    def __del__(self):
        deliver(signal.SIGINT)

def swallowed(signum):  # a library's catch-all (C++ catch (...), a bare except)
    try:
        deliver(signum)
    except BaseException:
        pass

def converted(signum):  # turned into an error of the library's own (pydantic-core's)
    try:
        deliver(signum)
    except BaseException as exc:
        raise RuntimeError("Error building validator") from exc

def finalizer(signum):  # raised where Python can only print it ("Exception ignored in")
    Finalized()

def recorded(signum):  # once the command has returned, nothing raises
    os.kill(os.getpid(), signum)
    time.sleep(0.2)

if {where!r} == "_output_state":  # the first signal, from the step before the build
    before_build = cli._worker_args

    def first(*args, **kwargs):
        before_build(*args, **kwargs)
        deliver(signal.SIGINT)

    cli._worker_args = first

real = getattr(cli, {where!r})

def step(*args, **kwargs):
    result = real(*args, **kwargs)
    {how}(signal.{signal})
    return result

setattr(cli, {where!r}, step)
if {where!r} == "cmd_plan":
    cli._COMMANDS["plan"] = step
sys.argv = ["synthgen", *sys.argv[1:]]
sys.exit(cli.run())
"""


@pytest.mark.parametrize(
    ("command", "where", "how", "signum", "code", "last"),
    [
        # swallowed during the imports before the build: the next checkpoint unwinds
        ("build", "_worker_args", "swallowed", "SIGINT", 130, "interrupted; nothing was"),
        ("build", "_worker_args", "finalizer", "SIGINT", 130, "interrupted; nothing was"),
        # turned into an ordinary error outside the command's own error handling
        ("build", "_setup_logging", "converted", "SIGTERM", 143, "terminated; nothing was"),
        ("build", "_worker_args", "converted", "SIGINT", 130, "interrupted; nothing was"),
        # the command went on and finished: the signal still decides the status
        ("plan", "cmd_plan", "swallowed", "SIGTERM", 143, "terminated as the command finished"),
        # a second signal while the first unwinds: one line, the first signal's status
        ("build", "_output_state", "recorded", "SIGTERM", 130, "interrupted; nothing was"),
        # after the command returned, as the interpreter exits: recorded, the status stands
        ("plan", "exiting", "recorded", "SIGINT", 0, None),
    ],
)
def test_a_signal_at_any_point_ends_with_its_status_and_no_traceback(
    command: str,
    where: str,
    how: str,
    signum: str,
    code: int,
    last: str | None,
    recipe: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    program = _AT_A_POINT.format(where=where, how=how, signal=signum)
    argv = [command, str(recipe)] + (["-o", str(out), "-q"] if command == "build" else [])
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=120
    )
    err = done.stderr
    assert done.returncode == code, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("synthgen: ")]
    if last is None:
        assert lines == [], err
    else:
        assert len(lines) == 1 and last in lines[0], err
    assert not out.exists()  # the build never started: nothing was written
    assert time.monotonic() - started < 60  # no build ran to its end
    if command == "plan":
        assert "2 samples in 1 shard(s)" in done.stdout  # the command did finish
