"""The same build on Beam's DaskRunner against a loopback dask.distributed cluster."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import pytest

from synthgen.pipelines import runner
from synthgen.pipelines.build import run_build
from synthgen.pipelines.progress import count_progress
from synthgen.storage.tars import iter_tar_samples
from tests.conftest import SPLIT_THRESHOLD, read_rows, tiny_recipe_dict, write_recipe


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    c = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield c
    finally:
        c.close()


def test_dask_build_equals_direct_runner_build(cluster, tmp_path: Path, model_dir: Path) -> None:
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {
        "clip_score": {"absolute": SPLIT_THRESHOLD},
        "label_margin": {"kept_fraction": 0.75},
        "near_duplicate": {"max_distance": 2},
    }
    recipe = write_recipe(tmp_path / "r.yaml", data)
    direct = run_build(recipe, tmp_path / "direct", show_progress=False)
    dask = run_build(
        recipe,
        tmp_path / "dask",
        beam_args=["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"],
        show_progress=False,
    )
    assert dask.manifest.counts == direct.manifest.counts
    # each planned sample generated exactly once on both runners (Dask has no Beam metrics
    # here: the per-worker progress marks count model outputs)
    planned = direct.manifest.counts.planned
    assert direct.metrics["generated"] == planned
    generated, _, _ = count_progress(tmp_path / "dask" / ".synthgen" / "progress")
    assert generated == planned, f"DaskRunner generated {generated} images for {planned}"
    # one shard per bag partition: both worker processes generate (3 shards here)
    by_process = generated_by_process(tmp_path / "dask" / ".synthgen" / "progress")
    assert len(by_process) == 2, f"images generated per worker process: {by_process}"
    if sys.platform.startswith("linux"):  # the nanny's MALLOC_TRIM_THRESHOLD_ undone
        from dask.distributed import Client

        with Client(cluster.scheduler_address) as client:
            prepared = client.run(lambda: runner.MALLOC.done)
        assert list(prepared.values()) == [True, True], prepared
    fields = ("key", "shard", "seed", "image_sha256", "status", "reject_reason", "prompt")
    a = [tuple(r[f] for f in fields) for r in read_rows(tmp_path / "direct").to_pylist()]
    b = [tuple(r[f] for f in fields) for r in read_rows(tmp_path / "dask").to_pylist()]
    assert a == b
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        # created_at differs between the two builds; image members are identical
        def images(path: Path) -> dict[str, bytes]:
            return {s.key: s.members["png"] for s in iter_tar_samples(path, {"png"})}

        assert images(tmp_path / "direct" / name) == images(tmp_path / "dask" / name)


def generated_by_process(progress: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for p in progress.glob("*.log"):  # named <pid>-<id>.log
        counts[p.name.split("-")[0]] += p.read_text(encoding="ascii").count("G")
    return {pid: n for pid, n in counts.items() if n}


def test_generation_spreads_shards_over_dask_partitions() -> None:
    from apache_beam.runners.dask.dask_runner import DaskOptions

    direct = runner.beam_options([])
    assert runner.generation_options(direct) is direct
    dask = runner.beam_options(["--runner=DaskRunner", "--dask_client_address=127.0.0.1:1"])
    spread = runner.generation_options(dask)
    assert spread.view_as(DaskOptions).partition_size == 1
    assert spread.view_as(DaskOptions).address == "127.0.0.1:1"
    assert dask.view_as(DaskOptions).partition_size is None  # the deciding pipeline's
    chosen = runner.beam_options(["--runner=DaskRunner", "--dask_npartitions=4"])
    assert runner.generation_options(chosen) is chosen


def test_unknown_runner_fails_before_output(tmp_path: Path, model_dir: Path) -> None:
    from synthgen.pipelines.build import BuildError

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(model_dir))
    with pytest.raises(BuildError, match="Beam runner 'NoSuchRunner'"):
        run_build(
            recipe, tmp_path / "out", beam_args=["--runner=NoSuchRunner"], show_progress=False
        )
    assert not (tmp_path / "out").exists()


def _local_cluster(**kwargs: Any) -> Any:
    from dask.distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        **kwargs,
    )


def test_preload_warms_workers_before_their_first_task() -> None:
    """`--preload synthgen.pipelines.dask_preload`: each fresh worker process has imported
    torch, diffusers (its classes resolved), transformers, open_clip, Beam's worker modules
    and synthgen's generating modules, and set its allocator, before it runs any task."""
    from dask.distributed import Client

    from synthgen.pipelines import dask_preload

    def worker_state(dask_worker: Any) -> tuple[list[str], int]:
        return dask_preload.cold(), len(dask_worker.state.tasks)

    with _local_cluster() as plain, Client(plain.scheduler_address) as client:
        # without it, a fresh worker has all of this still to do (inside its first tasks)
        plain = client.run(worker_state)
        assert len(plain) == 2  # both workers answered
        for missing, tasks in plain.values():
            assert tasks == 0
            assert {"torch", "diffusers", "open_clip", "synthgen.pipelines.runner"} <= set(missing)
    with (
        _local_cluster(preload=["synthgen.pipelines.dask_preload"]) as warm,
        Client(warm.scheduler_address) as client,
    ):
        states = client.run(worker_state)
        assert len(states) == 2
        assert all(state == ([], 0) for state in states.values()), states
        if sys.platform.startswith("linux"):  # the nanny's MALLOC_TRIM_THRESHOLD_ undone
            prepared = client.run(lambda: runner.MALLOC.done)
            assert list(prepared.values()) == [True, True], prepared
