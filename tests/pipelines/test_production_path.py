"""The production path: one call at a time per model copy on every runner, one worker per
device, out of device memory stops at once, a kill mid-round costs only shards in flight,
and SDXL carries synthgen's watermark only. Model calls are counted, not only outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import synthgen.pipelines.generate as stage
from synthgen.generators.devices import Device, claim_device, release_claims
from synthgen.pipelines.build import BuildError, run_build
from tests.conftest import read_rows, tiny_recipe_dict, write_recipe

FIELDS = ("key", "seed", "image_sha256", "status", "reject_reason", "clip_tiny_clip_score")


def _corpus(out: Path) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[f] for f in FIELDS) for r in read_rows(out).to_pylist())


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    data = tiny_recipe_dict(model_dir, count_per_class=5)
    data["output"] = {"shard_size": 3}  # 15 samples: 5 shards of one call each
    return write_recipe(tmp_path_factory.mktemp("recipe") / "recipe.yaml", data)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, recipe: Path) -> Any:
    return run_build(recipe, tmp_path_factory.mktemp("clean") / "out", show_progress=False)


class _Calls:
    """Wraps the stage's `call_model`: counts calls, who made them and how many overlapped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None):
        self.real = stage.call_model
        self.count = 0
        self.threads: set[int] = set()
        self.inside = 0
        self.most_inside = 0
        self.fail_at = fail_at
        self._lock = threading.Lock()
        monkeypatch.setattr(stage, "call_model", self)

    def __call__(self, pipe: Any, settings: Any, call: Any) -> Any:
        with self._lock:
            self.count += 1
            self.threads.add(threading.get_ident())
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            n = self.count
        try:
            if n == self.fail_at:
                import torch

                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return self.real(pipe, settings, call)
        finally:
            with self._lock:
                self.inside -= 1


def test_a_four_thread_build_equals_the_in_process_build_with_one_call_per_copy(
    tmp_path: Path, recipe: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch)
    result = run_build(
        recipe,
        tmp_path / "threads",
        beam_args=["--direct_running_mode=multi_threading", "--direct_num_workers=4"],
        show_progress=False,
    )
    assert _corpus(tmp_path / "threads") == _corpus(clean.output)
    assert result.manifest.counts.failed == 0
    assert len(calls.threads) > 1, "bundles ran on several threads"
    assert calls.most_inside == 1, "one call at a time on the one model copy"
    # every planned call made once: no call failed and was retried
    assert calls.count == result.metrics["generate_calls"] == clean.metrics["generate_calls"] == 5
    assert result.metrics.get("generate_splits", 0) == 0


def test_the_model_loop_only_makes_calls_while_the_feeder_scores(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard of six calls: every scoring call runs off the thread making the model calls
    while it makes them, some during them, and each chunk is scored exactly once."""
    import time

    data = tiny_recipe_dict(model_dir, count_per_class=4, batch_size=2)
    data["model"]["compute_batch"] = 2
    data["output"] = {"shard_size": 12}  # one shard: 6 model calls, 6 scoring chunks
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    log: list[tuple[str, int, float, float]] = []  # (what, thread, start, end)
    lock = threading.Lock()

    def timed(what: str, real: Any, pause: float = 0.0) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                if pause:
                    time.sleep(pause)  # device time: the GIL and the core stay free
                return real(*args, **kwargs)
            finally:
                with lock:
                    log.append((what, threading.get_ident(), start, time.monotonic()))

        return run

    monkeypatch.setattr(stage, "call_model", timed("call", stage.call_model, 0.1))
    monkeypatch.setattr(stage, "score_batch", timed("score", stage.score_batch))
    monkeypatch.setattr(stage.Worker, "generate", timed("shard", stage.Worker.generate))
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    assert result.manifest.counts.attempted == 12 and result.manifest.counts.failed == 0
    calls = [e for e in log if e[0] == "call"]
    scores = [e for e in log if e[0] == "score"]
    (shard,) = [e for e in log if e[0] == "shard"]
    assert len(calls) == result.metrics["generate_calls"] == 6
    assert len(scores) == result.metrics["score_calls"] == 6, "one scoring call per chunk"
    assert {c[1] for c in calls} == {shard[1]}
    during = [e for e in scores if e[2] < shard[3]]
    assert all(e[1] != shard[1] for e in during), "the model loop scored between its calls"
    assert during, "scoring waited for the shard's last model call"


CLAIM = """
import sys
from synthgen.generators.devices import Device, claim_device
devices = [Device(f"cuda:{i}", f"gpu-{i}") for i in range(4)]
print(claim_device("cuda", devices), flush=True)
sys.stdin.read()  # hold the claim until the test has heard from every process
"""


def test_worker_processes_claim_distinct_devices(tmp_path: Path) -> None:
    env = {**os.environ, "SYNTHGEN_DEVICE_CLAIMS": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    try:
        got = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.communicate("", timeout=60)
    # five processes, four devices: every device claimed, one shared by the fifth (it warns)
    assert set(got) == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"} and len(got) == 5


def test_local_rank_and_explicit_devices_are_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHGEN_DEVICE_CLAIMS", str(tmp_path))
    devices = [Device(f"cuda:{i}", f"gpu-{i}") for i in range(4)]
    release_claims()
    try:
        monkeypatch.setenv("LOCAL_RANK", "6")
        assert claim_device("cuda", devices) == "cuda:2"
        assert claim_device("cuda", devices) == "cuda:2", "one answer per process"
        release_claims()
        monkeypatch.delenv("LOCAL_RANK")
        assert claim_device("cuda:3") == "cuda:3"
        assert claim_device("cpu") == "cpu"
    finally:
        release_claims()


def test_four_worker_processes_each_generate_and_score_on_their_own_device(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHGEN_DEVICES", "cpu:0,cpu:1,cpu:2,cpu:3")
    monkeypatch.setenv("SYNTHGEN_DEVICE_CLAIMS", str(tmp_path / "claims"))
    data = tiny_recipe_dict(model_dir, count_per_class=4)
    data["output"] = {"shard_size": 2}  # 6 shards for 4 workers
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    from apache_beam.runners.portability import local_job_service

    started: list[int] = []  # one per worker process Beam runs
    run_worker = local_job_service.SubprocessSdkWorker.run

    def counted(worker: Any) -> None:
        started.append(1)
        run_worker(worker)

    monkeypatch.setattr(local_job_service.SubprocessSdkWorker, "run", counted)
    result = run_build(
        recipe,
        tmp_path / "out",
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=4"],
        show_progress=False,
    )
    assert len(started) == 4, "worker processes for generating only; checks and writing in threads"
    m = result.metrics
    workers = {k.removeprefix("workers_on_"): v for k, v in m.items() if k.startswith("workers_on")}
    assert len(workers) >= 2, f"several workers generated: {m}"
    assert set(workers.values()) == {1}, "no device is shared by two worker processes"
    for device in workers:
        assert m[f"calls_on_{device}"] > 0 and m[f"score_calls_on_{device}"] > 0
    assert sum(m[f"calls_on_{d}"] for d in workers) == m["generate_calls"] == 6


def test_out_of_device_memory_stops_after_one_call_and_keeps_what_was_generated(
    tmp_path: Path, recipe: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    calls = _Calls(monkeypatch, fail_at=3)  # the third shard's only call
    with pytest.raises(BuildError) as caught:
        run_build(recipe, out, show_progress=False)
    message = str(caught.value)
    assert "ran out of memory" in message and "model.compute_batch (now 4)" in message
    assert "--resume" in message and "Traceback" not in message
    assert calls.count == 3, "the failing call was not retried in halves"
    staged = sorted(p.name for p in (out / ".synthgen" / "staging").iterdir())
    assert len(staged) == 2, "the shards generated before it are kept"
    resumed = _Calls(monkeypatch)
    run_build(recipe, out, resume=True, show_progress=False)
    assert resumed.count == 3, "resume makes only the calls of the shards not staged"
    assert _corpus(out) == _corpus(clean.output)


def test_a_kill_mid_round_costs_at_most_the_shards_in_flight(
    tmp_path: Path, recipe: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe), "-o", str(out)],
        # killed as the last of 5 shards starts staging: every call has run by then
        env={**os.environ, "SYNTHGEN_FAULT": "stage:#5:kill"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staged = list((out / ".synthgen" / "staging").glob("*.arrow"))
    assert not (out / "manifest.json").exists()
    unstaged = 5 - len(staged)
    # lost: the shard being staged and at most the one before it, still being written
    assert 1 <= unstaged <= 2, f"{unstaged} shards lost; at most the 2 in flight may be"
    calls = _Calls(monkeypatch)
    result = run_build(recipe, out, resume=True, show_progress=False)
    assert calls.count == unstaged == result.metrics["generate_calls"]
    assert _corpus(out) == _corpus(clean.output)


def test_a_worker_process_killed_mid_bundle_fails_the_build_by_name_and_resume_completes_it(
    tmp_path: Path, recipe: Path, clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beam's subprocess workers are watched: one killed mid-bundle (as the out-of-memory
    killer does) used to leave the build waiting for its bundle forever."""
    out = tmp_path / "out"
    worker_flags = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]
    died = subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", "build", str(recipe), "-o", str(out),
         "--no-progress", "--", *worker_flags],
        # the 4th sample the worker generates: in the second of 5 shards
        env={**os.environ, "SYNTHGEN_FAULT": "generate:#4:kill"},
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails here
    )  # fmt: skip
    assert died.returncode == 1, died.stderr
    last = died.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "synthgen: error: a worker process ended while the build needed it (killed by SIGKILL"
    )
    assert "--resume" in last
    assert not (out / "manifest.json").exists()
    calls = _Calls(monkeypatch)
    result = run_build(recipe, out, resume=True, show_progress=False)
    assert calls.count == result.metrics["generate_calls"] >= 1
    assert _corpus(out) == _corpus(clean.output)


def test_exit_causes_are_named() -> None:
    from synthgen.pipelines.workers import exit_cause as _exit_cause

    assert _exit_cause(137).startswith("killed by SIGKILL, as the kernel's out-of-memory")
    assert _exit_cause(-9) == _exit_cause(137)
    assert _exit_cause(-15) == "killed by SIGTERM"
    assert _exit_cause(1) == "exit status 1"


def test_sdxl_is_built_without_diffusers_own_watermark(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import DiffusionPipeline

    from synthgen.generators.model_folder import load_pipeline
    from tests.generators.families import make_snapshot

    folder = make_snapshot("sdxl", tmp_path / "sdxl", tmp_path / "UNPICKLED")
    stock = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True)
    assert stock.watermark is not None, "diffusers would watermark (invisible-watermark is here)"
    pipe = load_pipeline(folder, "native", "float32", "cpu", 1)
    assert pipe.watermark is None
    data = tiny_recipe_dict(model_dir, count_per_class=1)
    data["model"] = {"path": str(folder), "compute_batch": 2, "license_ack": "other"}
    data["classes"] = data["classes"][:2]
    data["checks"] = {"clip_score": None}
    data["sampling"] = {**data["sampling"], "scheduler": "native", "negative_prompt": ""}
    applied: list[int] = []
    from diffusers.pipelines.stable_diffusion_xl import watermark

    real = watermark.StableDiffusionXLWatermarker.apply_watermark

    def counted(self: Any, images: Any) -> Any:
        applied.append(len(images))
        return real(self, images)

    monkeypatch.setattr(watermark.StableDiffusionXLWatermarker, "apply_watermark", counted)
    result = run_build(write_recipe(tmp_path / "r.yaml", data), tmp_path / "out")
    assert result.manifest.counts.attempted == 2 and applied == []
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["class"] == "StableDiffusionXLPipeline"
