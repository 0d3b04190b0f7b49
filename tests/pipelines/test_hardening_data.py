"""Hardening: what a build reads back is checked against the data, and reading it is bounded.

Counts are recounted from the Parquet status column and the tars' members; the embedded
reference cache carries its key and a digest of its content; `verify` streams tar members,
bounds their size and an image's pixels before decoding, and names an unreadable image or
trust list for what it is; a stalled gate process is given up on; shard bytes do not depend
on the interpreter's hash seed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import synthgen
from synthgen.pipelines.build import BuildError, ValidationFailed, run_build
from synthgen.pipelines.verify import VerifyError, verify
from synthgen.schemas.manifest import Manifest
from synthgen.schemas.recipe import recipe_from_dict
from synthgen.storage.cache import CACHE_ENV
from synthgen.validators import gate_process, nearest
from synthgen.validators.corpus import gate_corpus, validate_dir
from tests.conftest import run_cli, tiny_recipe_dict, write_recipe


def _recipe(model_dir: Path, **changes: object) -> dict[str, object]:
    data = tiny_recipe_dict(model_dir, count_per_class=1)
    data["checks"] = {"clip_score": None, "exact_duplicate": False}  # every sample accepted
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """Three accepted 32x32 samples in one shard."""
    tmp = tmp_path_factory.mktemp("build")
    run_build(
        write_recipe(tmp / "recipe.yaml", _recipe(model_dir)), tmp / "out", show_progress=False
    )
    return tmp / "out"


def _copy(build: Path, dest: Path) -> Path:
    shutil.copytree(build, dest)
    return dest


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _first_image(build: Path) -> bytes:
    with tarfile.open(build / "00000.tar") as t:
        for m in t.getmembers():
            if m.name.endswith(".png"):
                return t.extractfile(m).read()  # type: ignore[union-attr]
    raise AssertionError("no image")


# -- item 5: counts are recounted from the data -----------------------------------------------


def test_an_edited_manifest_count_is_refused_by_validate_and_load(
    tmp_path: Path, build: Path
) -> None:
    assert (
        validate_dir(build).ok and synthgen.load(build, verify=True).manifest.counts.accepted == 3
    )
    out = _copy(build, tmp_path / "out")
    _edit_json(out / "manifest.json", lambda m: m["counts"].update(accepted=999))
    report = validate_dir(out)
    assert not report.ok
    assert any("counts.accepted" in f and "999" in f for f in report.failures), report.failures
    with pytest.raises(BuildError, match=r"counts\.accepted: the manifest says 999.* 3"):
        synthgen.load(out, verify=True)


def test_an_edited_shard_count_is_refused_by_validate_and_load(tmp_path: Path, build: Path) -> None:
    out = _copy(build, tmp_path / "out")

    def move_one(m: dict) -> None:  # totals kept consistent: only the data can tell
        m["shards"][0].update(accepted=2, rejected=1)
        m["counts"].update(accepted=2, rejected=1)

    _edit_json(out / "manifest.json", move_one)
    report = validate_dir(out)
    assert any("shard 0: accepted" in f for f in report.failures), report.failures
    with pytest.raises(BuildError, match=r"shard 0: accepted: the manifest says 2"):
        synthgen.load(out, verify=True)


def test_an_edited_stats_file_in_a_parent_is_caught_by_the_childs_gate(
    tmp_path: Path, build: Path, model_dir: Path
) -> None:
    parent = _copy(build, tmp_path / "parent")
    _edit_json(parent / "00000_stats.json", lambda s: s.update(accepted=100))
    assert any("00000_stats.json" in f for f in validate_dir(parent).failures)
    recipe = write_recipe(tmp_path / "grown.yaml", _recipe(model_dir, count_per_class=2))
    with pytest.raises(ValidationFailed, match=r"counts\.accepted: the manifest says 103"):
        run_build(recipe, tmp_path / "child", extend=parent, show_progress=False)
    child = json.loads((tmp_path / "child" / "manifest.json").read_text())
    assert child["status"] == "failed_validation"


# -- item 6: the reference cache is keyed by content and checked -------------------------------


def _ref(scale: float = 1.0) -> nearest.ReferenceSet:
    emb = (np.eye(2, dtype=np.float32) * scale).astype(np.float32)
    return nearest.ReferenceSet(["r0", "r1"], [0, 1], ["0" * 16, "f" * 16], emb, [b"a", b"b"])


def _tamper_embeddings(path: Path) -> None:
    """Flip every embedding, keeping the file's schema and metadata (a careful edit)."""
    table = pq.read_table(path)
    emb = table.column("embedding").combine_chunks()
    flipped = pa.FixedSizeListArray.from_arrays(
        pa.array(-np.asarray(emb.flatten()), pa.float32()), emb.type.list_size
    )
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", flipped)
    pq.write_table(table, path)


def test_a_tampered_build_cache_file_is_rebuilt_and_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    made: list[int] = []

    def make() -> nearest.ReferenceSet:
        made.append(1)
        return _ref()

    key = nearest.cache_key("src", "clip", {"classes": {}})
    path = nearest.cached_reference(tmp_path, "reference", key, make)
    _tamper_embeddings(path)
    with pytest.raises(ValueError, match=rf"{path.name}.*content"):
        nearest.read_reference(path)
    again = nearest.cached_reference(tmp_path, "reference", key, make)
    assert len(made) == 2, "the tampered file was used"
    np.testing.assert_array_equal(nearest.read_reference(again).embeddings, np.eye(2))


def test_a_cache_file_made_for_another_key_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    made: list[str] = []
    key_a = nearest.cache_key("source-a", "clip", {"classes": {}})
    key_b = nearest.cache_key("source-b", "clip", {"classes": {}})
    path_a = nearest.cached_reference(tmp_path, "reference", key_a, lambda: _ref(1.0))
    path_b = tmp_path / f"reference-{key_b[:24]}.parquet"
    shutil.copy(path_a, path_b)  # a valid file, but of other content

    def make_b() -> nearest.ReferenceSet:
        made.append("b")
        return _ref(0.5)

    assert nearest.cached_reference(tmp_path, "reference", key_b, make_b) == path_b
    assert made == ["b"]
    with pytest.raises(ValueError, match="another key"):
        nearest.read_reference(path_a, key=key_b)


def test_a_shared_cache_file_tampered_with_its_record_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    made: list[int] = []

    def make() -> nearest.ReferenceSet:
        made.append(1)
        return _ref()

    key = nearest.cache_key("src", "clip", {"classes": {}})
    nearest.cached_reference(tmp_path / "b1", "reference", key, make)
    shared = tmp_path / "cache" / "references" / f"{key}.parquet"
    _tamper_embeddings(shared)
    record = shared.with_suffix(".json")  # the record rewritten to match: only content tells
    _edit_json(record, lambda r: r.update(sha256=nearest.file_sha256(shared)))
    path = nearest.cached_reference(tmp_path / "b2", "reference", key, make)
    assert len(made) == 2
    np.testing.assert_array_equal(nearest.read_reference(path).embeddings, np.eye(2))


# -- item 11: verify streams tar members, bounds their size and pixels ------------------------


def test_verify_streams_a_tar_and_never_reads_an_oversized_member(
    tmp_path: Path, build: Path
) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar makes the sparse member")
    work = tmp_path / "members"
    work.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # each under the bound; all of them together well over it
        (work / f"k{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(700_000))
    sparse = work / "huge.png"
    with sparse.open("wb") as f:
        f.truncate(256 * 2**20)  # 256 MiB of holes: a tar of a few KB
    tar = tmp_path / "hostile.tar"
    subprocess.run(["tar", "-cSf", str(tar), "-C", str(work), "."], check=True)
    assert tar.stat().st_size < 10 * 2**20
    tracemalloc.start()
    try:
        result = verify(tar, build)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.images) == 13 and not result.ok
    (huge,) = [r for r in result.images if r.name.endswith("huge.png")]
    assert any("268435456 bytes" in p and "not read" in p for p in huge.problems), huge.problems
    assert peak < 6 * 2**20, f"verify held {peak / 2**20:.1f} MiB at once"


def test_verify_does_not_decode_an_image_with_more_pixels_than_the_builds(
    tmp_path: Path, build: Path
) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("L", (4000, 4000)).save(bomb, compress_level=9)
    assert bomb.stat().st_size < 200_000
    image = verify(bomb, build).images[0]
    assert not image.ok and image.watermark == "not decoded"
    assert any("4000x4000" in p and "32x32" in p for p in image.problems), image.problems


# -- item 15: an unreadable image or trust list is named for what it is -----------------------


def test_an_unreadable_image_is_not_blamed_on_tampering(tmp_path: Path, build: Path) -> None:
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_first_image(build)[:200])
    image = verify(truncated, build).images[0]
    assert not image.ok
    assert not any("hash binding" in p or "changed after signing" in p for p in image.problems)
    assert image.c2pa.startswith("not checked: the file does not read as a PNG image")
    assert any(p.startswith("cannot decode the image") for p in image.problems), image.problems


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n", "X.509"),
        (b"-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n", "X.509"),
        (b"\xff\xfe-----BEGIN CERTIFICATE-----\n\xa0\n-----END CERTIFICATE-----\n", "text"),
        (b"-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n", "PRIVATE KEY"),
    ],
    ids=["garbage", "not-a-certificate", "not-utf8", "private-key"],
)
def test_a_bogus_trust_list_is_refused_naming_the_file(
    tmp_path: Path, build: Path, content: bytes, reason: str
) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_bytes(content)
    with pytest.raises(VerifyError, match=rf"bogus\.pem: .*{reason}"):
        verify(build, trust_list=bogus)


# -- item 16: a stalled gate process is given up on --------------------------------------------


def test_a_stalled_gate_process_means_the_gate_runs_here(
    build: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = Manifest.model_validate_json((build / "manifest.json").read_bytes())
    recipe = recipe_from_dict(manifest.recipe, "manifest.json")
    monkeypatch.setattr(gate_process, "STALL_SECONDS", 3.0)
    gate = gate_process.GateProcess(start=True)
    proc = gate.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    # where the build would wait forever, end the stopped process after a minute
    rescue = threading.Timer(60, proc.kill)
    rescue.start()
    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger=gate_process.__name__):
            report = gate.validate(build, manifest, recipe)
    finally:
        rescue.cancel()
    assert time.monotonic() - start < 45
    assert gate.ran_in_process is None and report.ok
    assert report.as_dict() == gate_corpus(build, manifest, recipe).as_dict()
    assert any("no sign of life" in r.getMessage() for r in caplog.records), caplog.text


def test_a_stalled_gate_process_cannot_block_the_request_on_a_full_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gate_process, "STALL_SECONDS", 2.0)
    gate = gate_process.GateProcess(start=True)
    proc = gate.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    rescue = threading.Timer(60, proc.kill)
    rescue.start()
    start = time.monotonic()
    try:  # far more than a pipe holds: the write itself would wait on the stopped reader
        answer = gate_process._ask(proc, {"manifest": "x" * 4_000_000})
    finally:
        rescue.cancel()
    assert answer is None and time.monotonic() - start < 30
    assert proc.poll() is not None, "the stalled process was left behind"


# -- item 17: shard bytes do not depend on PYTHONHASHSEED --------------------------------------


def test_shard_bytes_do_not_depend_on_the_hash_seed(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", _recipe(model_dir, count_per_class=2))
    state = tmp_path / "state"
    monkeypatch.setenv("SYNTHGEN_FAULT", "write:00000:raise")
    with pytest.raises(Exception, match="injected fault"):
        run_build(recipe, state, show_progress=False)
    monkeypatch.delenv("SYNTHGEN_FAULT")
    assert sorted(p.name for p in (state / ".synthgen" / "staging").iterdir()) == [
        "00000.arrow",
        "00001.arrow",
    ]
    shards: list[dict[str, bytes]] = []
    for seed in ("1", "2"):
        out = _copy(state, tmp_path / f"seed{seed}")
        proc = run_cli(
            "build", str(recipe), "-o", str(out), "--resume", "--no-progress",
            env={"PYTHONHASHSEED": seed},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = [*out.glob("0000?.tar"), *out.glob("0000?.parquet")]
        shards.append({p.name: p.read_bytes() for p in files})
    assert sorted(shards[0]) == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar"]
    differ = [name for name in shards[0] if shards[0][name] != shards[1][name]]
    assert not differ, f"bytes differ between hash seeds: {differ}"
    prov = json.loads(_tar_member(tmp_path / "seed1" / "00000.tar", ".json"))
    assert not any(k.startswith("_") for k in prov["scheduler_config"])


def _tar_member(tar: Path, suffix: str) -> bytes:
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            if m.name.endswith(suffix):
                return t.extractfile(m).read()  # type: ignore[union-attr]
    raise AssertionError(f"no {suffix} member in {tar}")
