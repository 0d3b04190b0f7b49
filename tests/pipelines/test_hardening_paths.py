"""Hardening: no published file carries a path of the machine that made the build.

Every tar member, every Parquet row and its metadata, manifest.json, the stats files,
report.json, report.html and the dataset card are read back and searched for the building
machine's folders (the build's own temporary folder, the home directory, the repository).
A path the recipe wrote relative to its folder is recorded as written, an absolute one by
its name; `synthgen regenerate` finds the inputs again (from where the build found them, the
recipe's folder, `--model`, `--inputs`) and makes the same bytes, and a record from before
(an absolute `model_path`) still regenerates.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthgen.generators.regenerate import Inputs, find_provenance, regenerate
from synthgen.pipelines.build import run_build
from synthgen.validators.corpus import validate_dir
from tests.conftest import run_main, tiny_recipe_dict, write_recipe
from tests.pipelines.test_balance import make_folder, make_webdataset
from tests.pipelines.test_operability import PROBE, heavy_at_exit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The building machine's folders: models, data, recipes, all under one distinctive
    temporary folder (its absolute path must appear in no published file)."""
    here = tmp_path_factory.mktemp("builder-home-alice")
    shutil.copytree(model_dir / "sd", here / "models" / "sd")
    shutil.copytree(model_dir / "clip", here / "models" / "clip")
    make_webdataset(here / "data" / "reference")
    make_folder(here / "data" / "cond")
    (here / "recipes").mkdir()
    return here


def _scorers(data: dict[str, object]) -> None:
    data["scoring"]["scorers"] = [  # type: ignore[index]
        {"name": n} for n in ("clip", "image_stats", "clip_embedding")
    ]
    data["checks"] = {"clip_score": {"absolute": -1.0}}  # every sample accepted


@pytest.fixture(scope="module")
def relative_build(machine: Path) -> Path:
    """A build whose recipe names everything relative to its folder, as in the repository:
    model, CLIP, a WebDataset reference set (nearest references, metrics) and an img2img
    source (conditioning settings in every row)."""
    data = tiny_recipe_dict(Path("../models"), count_per_class=2)
    _scorers(data)
    data["reference"] = {"source": "../data/reference/data-{000..001}.tar"}
    data["conditioning"] = {"mode": "img2img", "strength": 0.5, "source": {"path": "../data/cond"}}
    recipe = write_recipe(machine / "recipes" / "relative.yaml", data)
    return run_build(recipe, machine / "out" / "relative", show_progress=False).output


@pytest.fixture(scope="module")
def absolute_root(machine: Path) -> Path:
    """Two published builds of a recipe with absolute paths (one given with --set): the
    second one's report has a trend against the first."""
    data = tiny_recipe_dict(machine / "models", count_per_class=1)
    _scorers(data)
    recipe = write_recipe(machine / "recipes" / "absolute.yaml", data)
    root = machine / "out" / "published"
    clip = [f"scoring.clip_model={machine / 'models' / 'clip'}"]  # --set: made absolute
    for _ in range(2):
        run_build(recipe, overrides=clip, publish_root=root, show_progress=False)
    return root


@pytest.fixture(scope="module")
def balancing_build(machine: Path) -> Path:
    """A balancing build from a WebDataset source named relative to the recipe (the balance
    source is also its reference set): the balanced index and the manifest's balance block."""
    data = tiny_recipe_dict(Path("../models"))
    del data["count_per_class"]
    _scorers(data)
    data["output"] = {"shard_size": 4}
    data["balance"] = {"source": "../data/reference/data-{000..001}.tar", "target": "max"}
    recipe = write_recipe(machine / "recipes" / "balance.yaml", data)
    return run_build(recipe, machine / "out" / "balance", show_progress=False).output


def _machine_paths(machine: Path) -> list[str]:
    paths = {str(machine), str(machine.resolve()), str(ROOT), str(Path.cwd())}
    if Path.home() != Path("/"):
        paths.add(str(Path.home()))
    return sorted(paths)


_DATA_URI = re.compile(r"data:[a-z/+]+;base64,[A-Za-z0-9+/=]+")


def _published(build: Path) -> Iterator[tuple[str, str]]:
    """(where, text) for every published file of a build: each tar member, each Parquet
    file's rows and metadata, everything else as text. `.synthgen/` is private."""
    files = [p for p in sorted(build.rglob("*")) if p.is_file()]
    files = [p for p in files if p.relative_to(build).parts[0] != ".synthgen"]
    assert {"manifest.json", "report.json", "report.html", "README.md"} <= {p.name for p in files}
    for path in files:
        name = str(path.relative_to(build))
        if path.suffix == ".tar":
            with tarfile.open(path) as tf:
                for m in tf:
                    f = tf.extractfile(m)
                    yield f"{name}:{m.name}", m.name + (f.read() if f else b"").decode("latin-1")
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            yield name, repr(table.to_pylist()) + json.dumps(meta)
        elif path.suffix == ".html":
            yield name, _DATA_URI.sub("", path.read_text(encoding="utf-8"))
        else:
            yield name, path.read_bytes().decode("latin-1")


def _assert_no_machine_path(build: Path, machine: Path) -> int:
    seen = 0
    for where, text in _published(build):
        seen += 1
        for folder in _machine_paths(machine):
            assert folder not in text, f"{where} holds {folder}"
    return seen


def _rows(build: Path) -> list[dict[str, object]]:
    return [r for f in sorted(build.glob("0*.parquet")) for r in pq.read_table(f).to_pylist()]


def _tar_image(build: Path, key: str) -> bytes:
    for path in sorted(build.glob("*.tar")):
        with tarfile.open(path) as tf:
            for m in tf:
                if m.name == f"{key}.png":
                    f = tf.extractfile(m)
                    assert f is not None
                    return f.read()
    raise AssertionError(key)


def test_no_published_file_of_a_relative_recipe_holds_a_machine_path(
    relative_build: Path, machine: Path
) -> None:
    assert _assert_no_machine_path(relative_build, machine) > 10
    manifest = json.loads((relative_build / "manifest.json").read_text())
    assert manifest["model"]["path"] == "../models/sd"  # as the recipe wrote it
    assert manifest["recipe"]["model"]["path"] == "../models/sd"
    assert manifest["metrics"]["reference"] == "data-{000..001}.tar"
    prov = find_provenance(relative_build, str(_rows(relative_build)[0]["key"]))
    assert prov["model_path"] == "../models/sd"
    assert prov["conditioning"]["source"]["location"] == "../data/cond"  # type: ignore[index]
    refs = {str(r["nearest_ref"]) for r in _rows(relative_build)}
    assert refs and all(re.fullmatch(r"data-00[01]\.tar#s[01]x\d{3}", r) for r in refs), refs
    # the private state keeps where the inputs were, for this machine's own commands
    state = json.loads((relative_build / ".synthgen" / "state.json").read_text())
    assert state["recipe_dir"] == str((machine / "recipes").resolve())
    assert state["paths"][str((machine / "models" / "sd").resolve())] == "../models/sd"


def test_no_published_file_of_an_absolute_recipe_holds_a_machine_path(
    absolute_root: Path, machine: Path
) -> None:
    builds = sorted((absolute_root / "builds").iterdir())
    assert len(builds) == 2
    for build in builds:
        _assert_no_machine_path(build, machine)
        manifest = json.loads((build / "manifest.json").read_text())
        assert manifest["model"]["path"] == "sd"  # an absolute path: by name (and sha256)
        assert manifest["recipe"]["model"]["path"] == "sd"
        assert manifest["recipe"]["scoring"]["clip_model"] == "clip"  # given with --set
    trend = json.loads((builds[1] / "report.json").read_text())["trend"]
    assert trend["previous"]["output"] == builds[0].name
    # the recipe hash is never recomputed from the published copy: validate, resume
    assert validate_dir(absolute_root / "latest").ok
    again = run_build(
        machine / "recipes" / "absolute.yaml",
        overrides=[f"scoring.clip_model={machine / 'models' / 'clip'}"],
        publish_root=absolute_root,
        resume=True,
        show_progress=False,
    )
    assert again.generated_now == 0 and again.output == builds[1]


def test_no_published_file_of_a_balancing_build_holds_a_machine_path(
    balancing_build: Path, machine: Path
) -> None:
    import synthgen

    _assert_no_machine_path(balancing_build, machine)
    manifest = json.loads((balancing_build / "manifest.json").read_text())
    assert manifest["balance"]["source"] == "WebDataset ../data/reference/data-{000..001}.tar"
    index = pq.read_table(balancing_build / manifest["balance"]["balanced_index"]).to_pylist()
    real = [r["reference"] for r in index if r["source"] == "real"]
    assert len(real) == 12 and all(re.fullmatch(r"data-00[01]\.tar#s[01]x\d{3}", r) for r in real)
    # on this machine the reader finds the source where the build read it
    samples = list(synthgen.load(balancing_build).balanced().samples())
    assert len(samples) == 18 and all(s.data for s in samples)


def _regenerate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`synthgen regenerate ARGS` run from `cwd`, its stderr ending with the heavy modules
    loaded by exit (tests.pipelines.test_operability.PROBE)."""
    return subprocess.run(
        [sys.executable, "-c", PROBE, "regenerate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def _regenerate_in(
    cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """`synthgen regenerate ARGS` in this process, run from `cwd`: exit code, stdout, stderr
    (the refusals run in a fresh process, to show what they import)."""
    with monkeypatch.context() as m:
        m.chdir(cwd)
        return run_main(capsys, "regenerate", *args)


def test_regenerate_finds_the_inputs_here_with_model_or_by_the_recipe_folder(
    relative_build: Path,
    machine: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = str(next(r["key"] for r in _rows(relative_build) if r["status"] == "accepted"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = tmp_path / "again.png"
    # on the building machine: where the build found them (its private state)
    code, out, err = _regenerate_in(
        elsewhere, monkeypatch, capsys, str(relative_build), key, "--image-out", str(image)
    )
    assert code == 0 and "matches" in out, err
    assert image.read_bytes() == _tar_image(relative_build, key)
    # the build as published (no private state), regenerated elsewhere
    copy = tmp_path / "copy"
    shutil.copytree(relative_build, copy, ignore=shutil.ignore_patterns(".synthgen"))
    run = _regenerate(str(copy), key, cwd=elsewhere)
    assert run.returncode == 1
    assert "model folder '../models/sd' not found" in run.stderr and "--model PATH" in run.stderr
    assert heavy_at_exit(run) == [], "refused before torch, Beam or diffusers is imported"
    run = _regenerate(str(copy), key, "--model", str(machine / "models" / "sd"), cwd=elsewhere)
    assert run.returncode == 1
    assert "'../data/cond' not found" in run.stderr and "--inputs DIR" in run.stderr
    assert heavy_at_exit(run) == []
    model = ["--model", str(machine / "models" / "sd")]
    inputs = ["--inputs", str(machine / "recipes")]
    code, out, err = _regenerate_in(elsewhere, monkeypatch, capsys, str(copy), key, *model, *inputs)
    assert code == 0 and "matches" in out, err
    # from the recipe's folder, the recorded relative paths resolve as they did
    code, out, err = _regenerate_in(machine / "recipes", monkeypatch, capsys, str(copy), key)
    assert code == 0 and "matches" in out, err


def test_a_record_with_an_absolute_model_path_still_regenerates(
    absolute_root: Path, machine: Path
) -> None:
    build = (absolute_root / "latest").resolve()
    key = str(next(r["key"] for r in _rows(build) if r["status"] == "accepted"))
    prov = find_provenance(build, key)
    assert prov["model_path"] == "sd"
    prov["model_path"] = str(machine / "models" / "sd")  # as builds recorded it before
    assert regenerate(prov, Inputs()) == _tar_image(build, key)
    moved = dict(prov, model_path="/nowhere/sd")  # gone from there: --model names it
    with pytest.raises(ValueError, match=r"model folder '/nowhere/sd' not found.*--model"):
        regenerate(moved, Inputs())
    wrong = Inputs(model=machine / "models" / "clip")
    with pytest.raises(ValueError, match="content differs"):
        regenerate(prov, wrong)
