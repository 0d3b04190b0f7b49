from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import SPLIT_THRESHOLD, run_cli, run_main, tiny_recipe_dict, write_recipe


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)


@pytest.fixture(scope="module")
def cli_build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    data = tiny_recipe_dict(model_dir)
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}}
    recipe = write_recipe(tmp / "recipe.yaml", data)
    (tmp / "tmp").mkdir()
    proc = run_cli(
        "build",
        str(recipe),
        "--output",
        str(tmp / "out"),
        "--set",
        "count_per_class=3",
        "--set",
        "output.shard_size=4",
        "--",
        "--runner=DirectRunner",
        env={"TMPDIR": str(tmp / "tmp")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "synthgen: built" in proc.stdout and "images/s" in proc.stdout
    return tmp / "out"


def test_a_build_leaves_nothing_in_the_temporary_folder(cli_build: Path) -> None:
    # Beam's DirectRunner would first try its Prism runner, staging the pipeline in
    # temporary folders it never removes (two per pipeline); a build runs on the FnApiRunner.
    # torch keeps its compile cache there (torchinductor_<user>), which is not the build's.
    left = sorted(p.name for p in (cli_build.parent / "tmp").iterdir())
    assert [n for n in left if not n.startswith("torchinductor_")] == []


def test_set_overrides_reach_the_build(cli_build: Path) -> None:
    manifest = json.loads((cli_build / "manifest.json").read_text())
    assert manifest["counts"]["planned"] == 9
    assert manifest["recipe"]["output"]["shard_size"] == 4
    assert len(manifest["shards"]) == 3


def test_regenerate_matches_recorded_bytes(
    cli_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first row from the command line, the last in this process (the same command)."""
    import hashlib

    rows = pq.read_table(cli_build / "00001.parquet").to_pylist()
    for row, fresh in ((rows[0], True), (rows[-1], False)):
        out_png = tmp_path / f"{row['key']}.png"
        args = ("regenerate", str(cli_build), row["key"], "--image-out", str(out_png))
        if fresh:
            proc = _run(*args)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            code, out, err = run_main(capsys, *args)
        assert code == 0, err
        assert "matches" in out
        assert hashlib.sha256(out_png.read_bytes()).hexdigest() == row["image_sha256"]


def test_regenerate_refuses_a_changed_model(
    cli_build: Path, tmp_path: Path, model_dir: Path
) -> None:
    import shutil

    from synthgen.schemas.records import read_build_constants

    constants = read_build_constants(pq.read_schema(cli_build / "00000.parquet"))
    assert constants["model_path"] == "sd"  # an absolute path in the recipe: by name
    rows = pq.read_table(cli_build / "00000.parquet", columns=["key"]).to_pylist()
    moved = tmp_path / "copy"
    shutil.copytree(cli_build, moved)
    # a changed copy of the model (the shared folder stays as it is: other tests, in other
    # processes, build with it at this moment)
    model = Path(shutil.copytree(model_dir / "sd", tmp_path / "sd"))
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    proc = _run("regenerate", str(moved), rows[0]["key"], "--model", str(model))
    assert proc.returncode == 1
    assert "content differs" in proc.stderr


def test_report_and_validate_commands(cli_build: Path) -> None:
    (cli_build / "report.html").unlink()
    proc = _run("report", str(cli_build))
    assert proc.returncode == 0 and (cli_build / "report.html").is_file()
    proc = _run("validate", str(cli_build))
    assert proc.returncode == 0, proc.stdout
    assert "valid" in proc.stdout


def test_bad_override_exits_1_naming_the_field(recipe_file: Path, tmp_path: Path) -> None:
    proc = _run("build", str(recipe_file), "-o", str(tmp_path / "out"), "--set", "seed=-4")
    assert proc.returncode == 1
    assert "seed: Input should be greater than or equal to 0" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_key_in_a_regenerate_request(cli_build: Path) -> None:
    proc = _run("regenerate", str(cli_build), "no-such-key")
    assert proc.returncode == 1 and "found 0 times" in proc.stderr


def test_version_plan_and_flags_after_the_subcommand(recipe_file: Path, tmp_path: Path) -> None:
    from synthgen import __version__

    version = _run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"synthgen {__version__}"
    planned = _run("plan", str(recipe_file), "-q", "--examples", "1", "--set", "seed=3")
    assert planned.returncode == 0, planned.stderr
    assert "12 samples in 3 shard(s) of up to 5" in planned.stdout
    assert planned.stdout.count("  tiny-") == 3  # one example per class
    assert not list(tmp_path.iterdir()) or all(p.suffix == ".yaml" for p in tmp_path.iterdir())


def test_unknown_recipe_key_is_reported_before_any_output(
    recipe_file: Path, tmp_path: Path
) -> None:
    done = _run("build", str(recipe_file), "-o", str(tmp_path / "out"), "--set", "colour=red", "-v")
    assert done.returncode == 1
    assert "colour: unknown field" in done.stderr
    assert not (tmp_path / "out").exists()


def test_verbose_is_synthgens_debug_not_every_librarys() -> None:
    """`-v` shows synthgen's debug lines; libraries' debug chatter (PIL's chunk dumps) stays off."""
    import logging

    from synthgen.pipelines.cli import _setup_logging

    root = logging.getLogger()
    saved = root.level, list(root.handlers), logging.getLogger("synthgen").level
    try:
        root.handlers[:] = []  # as in a fresh process: basicConfig acts only on a bare root
        _setup_logging(verbose=True)
        assert logging.getLogger("synthgen.pipelines.build").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("synthgen").setLevel(saved[2])
