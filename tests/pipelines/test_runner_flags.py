"""Production runner flag sets from docs/runners.md: options build, nothing is submitted."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PortableOptions,
    SparkRunnerOptions,
    StandardOptions,
    WorkerOptions,
)

from synthgen.pipelines import runner
from synthgen.pipelines.resolve import make_context, resolve
from synthgen.pipelines.runner import beam_options
from synthgen.schemas.manifest import PlanRound
from synthgen.schemas.recipe import load_recipe
from tests.conftest import tiny_recipe_dict, write_recipe

DATAFLOW = [
    "--runner=DataflowRunner",
    "--project=my-project",
    "--region=us-central1",
    "--temp_location=gs://my-bucket/tmp",
    "--sdk_container_image=us-docker.pkg.dev/my-project/synthgen/worker:0.1.0",
    "--machine_type=g2-standard-8",
    "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    "--experiments=no_use_multiple_sdk_containers",
    "--number_of_worker_harness_threads=1",
]
FLINK = [
    "--runner=FlinkRunner",
    "--flink_master=flink-jobmanager:8081",
    "--environment_type=DOCKER",
    "--environment_config=my-registry/synthgen-worker:0.1.0",
    "--parallelism=8",
]
SPARK = [
    "--runner=SparkRunner",
    "--spark_master_url=spark://spark-master:7077",
    "--environment_type=DOCKER",
    "--environment_config=my-registry/synthgen-worker:0.1.0",
]
PORTABLE = [
    "--runner=PortableRunner",
    "--job_endpoint=job-server:8099",
    "--environment_type=EXTERNAL",
    "--environment_config=worker-pool:50000",
]


def test_documented_flag_sets_are_in_the_docs() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "runners.md").read_text()
    for flags in (DATAFLOW, FLINK, SPARK, PORTABLE):
        for flag in flags:
            assert flag in doc, flag


def test_dataflow_gpu_options() -> None:
    o = beam_options(DATAFLOW)
    assert o.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = o.view_as(GoogleCloudOptions)
    assert gcp.project == "my-project" and gcp.region == "us-central1"
    assert gcp.dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    assert "no_use_multiple_sdk_containers" in o.view_as(DebugOptions).experiments
    assert o.view_as(WorkerOptions).machine_type == "g2-standard-8"
    assert o.view_as(WorkerOptions).sdk_container_image.endswith("worker:0.1.0")


def test_portable_runner_options() -> None:
    flink = beam_options(FLINK)
    assert flink.view_as(FlinkRunnerOptions).flink_master == "flink-jobmanager:8081"
    assert flink.view_as(PortableOptions).environment_type == "DOCKER"
    spark = beam_options(SPARK)
    assert spark.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"
    portable = beam_options(PORTABLE)
    assert portable.view_as(PortableOptions).job_endpoint == "job-server:8099"


def test_accelerator_hint_only_on_the_model_step(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_recipe_dict(model_dir)
    data["model"]["accelerator"] = "type:nvidia-l4;count:1;install-nvidia-driver"
    recipe, base = load_recipe(write_recipe(tmp_path / "r.yaml", data))
    resolved = resolve(recipe, base)
    pipelines: list[beam.Pipeline] = []

    def capture(p: beam.Pipeline) -> dict[str, int]:
        pipelines.append(p)
        return {}

    monkeypatch.setattr(runner, "_run", capture)  # the graphs are built, never run
    runner.run_shards(
        resolved,
        make_context(resolved, "2024-01-01T00:00:00Z"),
        PlanRound(),
        [0],
        earlier_shards=[],
        out=tmp_path / "out",
        progress_dir=tmp_path,
        show_progress=False,
        options=beam_options([]),
        total=1,
        done_counts=(0, 0),
    )
    generating, deciding = (p.to_runner_api() for p in pipelines)

    def hinted(proto) -> set[str]:  # type: ignore[no-untyped-def]
        def hints(t) -> dict:  # type: ignore[no-untyped-def]
            if not t.environment_id:
                return {}
            return dict(proto.components.environments[t.environment_id].resource_hints)

        return {
            t.unique_name
            for t in proto.components.transforms.values()
            if any("accelerator" in key for key in hints(t))
        }

    assert any("GenerateShards" in name for name in hinted(generating))
    assert not any("ShardIds" in name or "Spread" in name for name in hinted(generating))
    assert hinted(deciding) == set(), "checks and writing ask for no accelerator"


def test_the_deciding_pipeline_runs_on_threads_where_generation_has_processes() -> None:
    """Checks and writing do no model work: on the DirectRunner their worker processes (a
    cold start each, every round) become as many threads; other runners keep theirs."""
    from apache_beam.options.pipeline_options import DirectOptions

    processes = beam_options(["--direct_running_mode=multi_processing", "--direct_num_workers=4"])
    threads = runner.deciding_options(processes)
    assert threads.view_as(DirectOptions).direct_running_mode == "multi_threading"
    assert threads.view_as(DirectOptions).direct_num_workers == 4
    assert processes.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert runner.generation_options(processes) is processes, "generation keeps its processes"
    for kept in (
        beam_options([]),
        beam_options(["--direct_running_mode=multi_threading", "--direct_num_workers=2"]),
        beam_options(["--runner=DaskRunner", "--direct_running_mode=multi_processing"]),
    ):
        assert runner.deciding_options(kept) is kept


def test_a_batch_build_on_the_direct_runner_runs_on_the_fn_api_runner() -> None:
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    from synthgen.pipelines.runner import pipeline

    for flags in (
        [],
        ["--runner=DirectRunner", "--direct_num_workers=2"],
        ["--runner=direct"],  # any of Beam's names for it
        ["--runner=apache_beam.runners.direct.direct_runner.DirectRunner"],
    ):
        made = pipeline(beam_options(flags))
        assert isinstance(made.runner, FnApiRunner), flags
    # streaming is left to Beam's own DirectRunner, which picks a runner that streams
    streaming = pipeline(beam_options(["--runner=DirectRunner", "--streaming"]))
    assert isinstance(streaming.runner, SwitchingDirectRunner)


def test_the_progress_display_runs_from_the_builds_clock(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, base = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(model_dir)))
    resolved = resolve(recipe, base)
    shown: list[float | None] = []

    class Shown(runner.Progress):
        def __init__(self, *args, started: float | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
            shown.append(started)
            super().__init__(*args, started=started, **kwargs)

    monkeypatch.setattr(runner, "_run", lambda p: {})  # the graphs are built, never run
    monkeypatch.setattr(runner, "Progress", Shown)
    (tmp_path / "progress").mkdir()
    runner.run_shards(
        resolved,
        make_context(resolved, "2024-01-01T00:00:00Z"),
        PlanRound(),
        [0],
        earlier_shards=[],
        out=tmp_path / "out",
        progress_dir=tmp_path / "progress",
        show_progress=True,
        options=beam_options([]),
        total=1,
        done_counts=(0, 0),
        started=123.0,
    )
    assert shown == [123.0]  # one display for both pipelines, on the build's clock
