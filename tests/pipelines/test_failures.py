"""Per-sample failures: an exception while generating, scoring or encoding one sample is that
sample's `failed` row, never a failed build, within the recipe's `max_failed_fraction`."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from synthgen.generators.handler import DeviceOutOfMemory, generate_batch
from synthgen.generators.planning import plan
from synthgen.pipelines.build import run_build
from synthgen.pipelines.generate import StageSpec, Worker
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.pipelines.session import ValidationFailed
from synthgen.pipelines.staging import read_staged
from synthgen.schemas.failures import MESSAGE_CHARS, error_message
from synthgen.schemas.manifest import PlanRound
from synthgen.schemas.recipe import load_recipe, recipe_from_dict
from synthgen.schemas.records import FAILED, GenerationRequest, Sample
from synthgen.validators.build_checks import make_checks
from synthgen.validators.corpus import validate_dir
from tests.conftest import read_rows, tiny_recipe_dict, write_recipe

BUDGET = 0.2  # one failed sample of the tiny build's 12 is within it


def _recipe(tmp: Path, model_dir: Path, budget: float | None = BUDGET, **changes: Any) -> Path:
    data = tiny_recipe_dict(model_dir, **changes)
    if budget is not None:
        data["validation"] = {"max_failed_fraction": budget}
    return write_recipe(tmp / "recipe.yaml", data)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in read_rows(out).to_pylist()}


def _tar_members(out: Path) -> list[str]:
    names = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            names += [m.name for m in tf]
    return names


def _batch_of(recipe: Path, key: str) -> list[str]:
    """The planned batch (ExpandShard: consecutive slices of a shard) holding `key`."""
    r, _ = load_recipe(recipe)
    by_shard: dict[int, list[str]] = {}
    for req in plan(r):
        by_shard.setdefault(req.shard, []).append(req.key)
    for keys in by_shard.values():
        for start in range(0, len(keys), r.batch_size):
            batch = keys[start : start + r.batch_size]
            if key in batch:
                return batch
    raise AssertionError(f"{key} is not planned")


@pytest.fixture
def clean(default_build: Path) -> Any:
    """The clean build: `_recipe` without the failure budget, which changes the recipe hash
    but no image, status or call count. Shared with other modules: read it, never change it."""
    metrics = json.loads((default_build.parent / "metrics.json").read_text(encoding="utf-8"))
    return SimpleNamespace(output=default_build, metrics=metrics)


# -- the generating stage: calls split in half, one failed row per failing sample -----------


def _request(key: str) -> GenerationRequest:
    return GenerationRequest(key, 0, 0, 0, "zero", "a digit", "", 1)


def _worker(recipe_path: Path, tmp: Path) -> Worker:
    """The production stage's worker for a recipe, its staging under `tmp`."""
    recipe, base = load_recipe(recipe_path)
    resolved = resolve(recipe, base)
    checks, _ = make_checks(recipe, [*resolved.score_columns])
    spec = StageSpec(
        recipe=recipe,
        plan_round=PlanRound(round=0),
        settings=generation_settings(resolved),
        scorers=tuple(resolved.scorers),
        checks=tuple(checks),
        out=str(tmp),
    )
    return Worker(spec)


def _stage(worker: Worker, shard: int, requests: Sequence[GenerationRequest]) -> list[Sample]:
    job = worker.generate(shard, requests)
    worker.wait(job)
    by_key = {s.request.key: s for s in read_staged(Path(worker.spec.out), shard)}
    return [by_key[r.key] for r in requests]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Worker:
    tmp = tmp_path_factory.mktemp("worker")
    return _worker(_recipe(tmp, model_dir), tmp / "out")


def test_a_failing_sample_splits_its_call_in_half_until_it_fails_alone(
    worker: Worker, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synthgen.pipelines.generate as stage

    requests = plan(worker.spec.recipe)[:4]
    bad = requests[2].key
    calls: list[list[str]] = []
    real_call_model = stage.call_model

    def call_model(pipe: Any, settings: Any, call: Any) -> Any:
        calls.append([r.key for r in call.requests])
        if bad in calls[-1]:
            raise FloatingPointError(f"NaN latents in /home/someone/models/{bad}/unet")
        return real_call_model(pipe, settings, call)

    monkeypatch.setattr(stage, "call_model", call_model)
    samples = _stage(worker, 90, requests)
    keys = [r.key for r in requests]
    assert calls == [keys, keys[:2], keys[2:], keys[2:3], keys[3:]]
    assert [s.status for s in samples] == ["accepted", "accepted", FAILED, "accepted"]
    failed = samples[2]
    assert failed.reject_reason == "error:FloatingPointError"
    assert failed.image == b"" and "/" not in (failed.error_message or "")
    assert failed.error_message == "NaN latents in <path>"
    want = _rows(clean.output)
    for s in (samples[0], samples[1], samples[3]):
        assert s.image_sha256 == want[s.request.key]["image_sha256"], s.request.key


def test_a_failing_score_fails_only_its_sample_and_keeps_the_others(
    worker: Worker, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = plan(worker.spec.recipe)[:4]
    monkeypatch.setenv("SYNTHGEN_FAULT", f"score:{requests[1].key}:raise")
    samples = _stage(worker, 91, requests)
    assert [s.status for s in samples] == ["accepted", FAILED, "accepted", "accepted"]
    assert samples[1].reject_reason == "error:InjectedFault" and samples[1].image == b""
    want = _rows(clean.output)
    column = next(c for c in want[requests[0].key] if c.endswith("_score"))
    for s in (samples[0], samples[2], samples[3]):
        assert s.scores[column] == pytest.approx(want[s.request.key][column], abs=0), column


@pytest.mark.parametrize("scorer", ["either thread", "the waiting thread"])
def test_a_shard_that_fails_gives_back_every_slot_it_held(
    worker: Worker, clean: Any, monkeypatch: pytest.MonkeyPatch, scorer: str
) -> None:
    """Scoring runs out of device memory on a shard's first chunk: the shard fails, and the
    worker (which Beam reuses for the retry) has all its room between model and scorers
    again, not less by the images the failed shard had in flight. Whichever thread scores
    the chunk: the feeder, or (host work slower than the calls) the one waiting for it."""
    import synthgen.pipelines.generate as stage

    requests = plan(worker.spec.recipe)[:6]
    real, scored = stage.score_batch, []
    if scorer == "the waiting thread":
        finish = stage.finish_image

        def slow_finish(*args: Any) -> Any:
            time.sleep(0.3)  # the feeder has fed every call, and idles, before one is ready
            return finish(*args)

        monkeypatch.setattr(stage, "finish_image", slow_finish)

    def score(scorers: Any, items: Any) -> Any:
        scored.append(len(items))
        if len(scored) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(scorers, items)

    monkeypatch.setattr(stage, "score_batch", score)
    job = worker.generate(93, requests)
    with pytest.raises(DeviceOutOfMemory, match="scoring"):
        worker.wait(job)
    deadline = time.monotonic() + 10.0
    while worker.slots._value != worker.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)  # host threads still finishing the failed shard's images
    assert worker.slots._value == worker.in_flight, "slots held by a failed shard"
    assert job.slots == 0 and job.reclaimed
    monkeypatch.undo()  # the real scorers and host work again
    samples = _stage(worker, 94, requests)  # the same worker, the same images as ever
    want = _rows(clean.output)
    assert [s.image_sha256 for s in samples] == [want[r.key]["image_sha256"] for r in requests]
    assert worker.slots._value == worker.in_flight


def test_error_messages_are_one_short_line_without_paths() -> None:
    exc = OSError(2, "No such file or directory", "/srv/models/sd/unet/weights.safetensors")
    assert error_message(exc) == "[Errno 2] No such file or directory: '<path>'"
    long = RuntimeError("CUDA out of memory.\n" + "Tried to allocate 2 GiB " * 40)
    message = error_message(long)
    assert len(message) <= MESSAGE_CHARS and "\n" not in message
    assert error_message(ValueError(r"bad C:\data\x.png and ./rel/y")) == ("bad <path> and <path>")


def test_non_finite_pixels_fail_only_their_sample(
    worker: Worker, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synthgen.generators.conditioning as conditioning  # run_call reaches the pipeline here

    real = conditioning.conditioned_call

    def spoiled(pipe: Any, family: str, requests: Any) -> Any:
        run, images = real(pipe, family, requests)

        def call(**kwargs: Any) -> Any:
            out = run(**kwargs)
            out.images[1] = float("nan")
            return out

        return call, images

    monkeypatch.setattr(conditioning, "conditioned_call", spoiled)
    samples = _stage(worker, 92, plan(worker.spec.recipe)[:4])
    assert [s.status for s in samples] == ["accepted", FAILED, "accepted", "accepted"]
    assert samples[1].reject_reason == "error:FloatingPointError"
    clean_rows = _rows(clean.output)
    for s in (samples[0], samples[2], samples[3]):
        assert s.image_sha256 == clean_rows[s.request.key]["image_sha256"]


def test_generate_batch_is_the_same_steps_run_synchronously(worker: Worker, clean: Any) -> None:
    pipe = worker.copies.get()
    try:
        samples = generate_batch(pipe, worker.settings, plan(worker.spec.recipe)[:4])
    finally:
        worker.copies.put(pipe)
    clean_rows = _rows(clean.output)
    assert [s.image_sha256 for s in samples] == [
        clean_rows[s.request.key]["image_sha256"] for s in samples
    ]


# -- builds -----------------------------------------------------------------------------------


def test_failing_samples_are_failed_rows_in_a_build_that_validates(
    tmp_path: Path, model_dir: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, model_dir)
    bad, unscored = "tiny-two-000000", "tiny-one-000002"  # in two batches of 4
    assert len(_batch_of(recipe, bad)) == len(_batch_of(recipe, unscored)) == 4
    monkeypatch.setenv("SYNTHGEN_FAULT", f"generate:{bad}:raise,score:{unscored}:raise")
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    out = result.output

    rows, want = _rows(out), _rows(clean.output)
    assert set(rows) == set(want), "every planned key has its row"
    failed = {k: r for k, r in rows.items() if r["status"] == FAILED}
    assert sorted(failed) == sorted([bad, unscored])
    for r in failed.values():
        assert r["reject_reason"] == "error:InjectedFault"
        assert r["error_message"] and "/" not in r["error_message"]
        assert r["rejected_image"] is None
    assert failed[bad]["image_sha256"] == ""  # never generated
    assert failed[unscored]["image_sha256"] == want[unscored]["image_sha256"]  # not scored
    for key, r in rows.items():
        if key not in failed:
            assert (r["image_sha256"], r["status"]) == (
                want[key]["image_sha256"],
                want[key]["status"],
            ), key
    members = _tar_members(out)
    assert not [m for m in members if m.split(".")[0] in failed]
    assert sorted(members) == sorted(
        m for m in _tar_members(clean.output) if m.split(".")[0] not in failed
    )

    # a batch of 4 with one bad sample: the batch, its halves, the bad half's halves
    for step in ("generate", "score"):
        assert result.metrics[f"{step}_calls"] - clean.metrics[f"{step}_calls"] == 4
        assert result.metrics[f"{step}_splits"] == 2 and result.metrics[f"{step}_failed"] == 1

    assert result.manifest.status == "complete"
    assert result.manifest.counts.failed == 2
    assert result.manifest.counts.attempted == 12
    assert validate_dir(out).ok
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["failed"] == 2
    assert report["failures"]["by_reason"] == {"error:InjectedFault": 2}
    assert report["failures"]["by_class"] == {"one": 1, "two": 1}
    assert [f["key"] for f in report["failures"]["first"]] == sorted(failed)
    assert "Failed samples" in (out / "report.html").read_text()

    # a finished shard is final: resuming the complete build retries nothing
    again = run_build(recipe, out, resume=True, show_progress=False)
    assert again.generated_now == 0 and again.manifest.counts.failed == 2


@pytest.mark.slow
def test_a_whole_batch_failure_is_retried_in_halves_with_the_same_bytes(
    tmp_path: Path, model_dir: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, model_dir)
    monkeypatch.setenv("SYNTHGEN_FAULT", "generate_batch:4:raise")  # e.g. out of memory
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    rows, want = _rows(result.output), _rows(clean.output)
    assert {k: r["image_sha256"] for k, r in rows.items()} == {
        k: r["image_sha256"] for k, r in want.items()
    }
    assert result.manifest.counts.failed == 0
    fours = result.metrics["generate_splits"]
    assert fours == 2  # shards of 5, 5, 2 in batches of 4: two batches of four
    assert result.metrics["generate_calls"] == clean.metrics["generate_calls"] + 2 * fours


def test_failures_past_the_budget_fail_the_build_naming_it(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, model_dir, budget=None, count_per_class=1)  # budget 0.001
    monkeypatch.setenv("SYNTHGEN_FAULT", "generate_batch:*:raise")
    with pytest.raises(ValidationFailed) as caught:
        run_build(recipe, tmp_path / "out", show_progress=False)
    message = str(caught.value)
    assert "validation.max_failed_fraction 0.001" in message
    assert "observed failed fraction 1 (3 of 3 samples failed)" in message
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed_validation"
    assert manifest["counts"]["failed"] == 3
    assert _tar_members(out) == []
    report = json.loads((out / "report.json").read_text())
    assert report["failures"]["count"] == 3
    assert all("/" not in (f["message"] or "") for f in report["failures"]["first"])


@pytest.mark.slow
def test_resume_retries_failed_samples_of_unfinished_shards_only(
    tmp_path: Path, model_dir: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(tmp_path, model_dir)
    out = tmp_path / "out"
    bad = "tiny-two-000000"
    # the sample fails, then the build crashes before any shard is written
    monkeypatch.setenv("SYNTHGEN_FAULT", f"generate:{bad}:raise,write:*:raise")
    with pytest.raises(Exception, match="injected fault at write"):
        run_build(recipe, out, show_progress=False)
    monkeypatch.delenv("SYNTHGEN_FAULT")
    result = run_build(recipe, out, resume=True, show_progress=False)
    rows = _rows(out)
    assert rows[bad]["status"] != FAILED, "the failed sample was tried again"
    assert {k: r["image_sha256"] for k, r in rows.items()} == {
        k: r["image_sha256"] for k, r in _rows(clean.output).items()
    }
    # only the shard holding the failure was generated again
    planned = plan(load_recipe(recipe)[0])
    shard = next(r.shard for r in planned if r.key == bad)
    assert result.metrics["generated"] == sum(1 for r in planned if r.shard == shard)


@pytest.mark.slow
def test_an_extend_build_keeps_its_parents_failed_rows(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_recipe_dict(model_dir, count_per_class=2)
    data["validation"] = {"max_failed_fraction": BUDGET}
    parent = write_recipe(tmp_path / "parent.yaml", data)
    monkeypatch.setenv("SYNTHGEN_FAULT", "generate:tiny-two-000000:raise")
    run_build(parent, tmp_path / "parent", show_progress=False)
    monkeypatch.delenv("SYNTHGEN_FAULT")
    data["count_per_class"] = 3
    grown = write_recipe(tmp_path / "grown.yaml", data)
    result = run_build(grown, tmp_path / "child", extend=tmp_path / "parent", show_progress=False)
    rows = _rows(result.output)
    assert len(rows) == 9 and rows["tiny-two-000000"]["status"] == FAILED
    assert result.manifest.counts.failed == 1
    assert validate_dir(result.output).ok


def test_the_default_budget_leaves_the_recipe_hash_as_it_was(model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    plain = recipe_from_dict(data, "recipe").hash
    default = recipe_from_dict({**data, "validation": {"max_failed_fraction": 0.001}}, "recipe")
    other = recipe_from_dict({**data, "validation": {"max_failed_fraction": 0.2}}, "recipe")
    assert default.hash == plain != other.hash


def test_a_failed_sample_in_a_build_storing_embeddings_reads_back_everywhere(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed row has no embedding; every reader still reads the whole shard table (a
    null fixed-size list is unreadable by pyarrow's Parquet reader), and the row reads as
    "no vector", never as a vector."""
    import pyarrow.parquet as pq

    from synthgen.pipelines.decide import _stored_vectors

    data = tiny_recipe_dict(model_dir, count_per_class=2)
    data["validation"] = {"max_failed_fraction": 0.5}
    data["scoring"]["scorers"] = [{"name": "clip"}, {"name": "clip_embedding"}]
    data["checks"] = {"clip_score": None, "semantic_duplicate": {"min_similarity": 0.9999}}
    bad = "tiny-two-000000"
    monkeypatch.setenv("SYNTHGEN_FAULT", f"generate:{bad}:raise")
    result = run_build(
        write_recipe(tmp_path / "r.yaml", data), tmp_path / "out", show_progress=False
    )
    tables = [pq.read_table(p) for p in sorted(result.output.glob("*.parquet"))]  # whole tables
    rows = {r["key"]: r for t in tables for r in t.to_pylist()}
    assert rows[bad]["status"] == FAILED
    column = next(c.name for c in result.manifest.score_columns if c.is_vector)
    assert all(v is None for v in rows[bad][column])
    assert all(v is not None for k, r in rows.items() if k != bad for v in r[column])
    stored = _stored_vectors(result.output, result.manifest.shard_ids, [column])
    assert bad not in stored and len(stored) == len(rows) - 1
    assert validate_dir(result.output).ok
