"""Extend builds: old shards kept byte for byte, only new keys generated, lineage recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.pipelines.build import BuildError, run_build
from synthgen.validators.corpus import validate_dir
from tests.conftest import read_rows, tiny_recipe_dict, write_recipe


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("parent")
    data = tiny_recipe_dict(model_dir, count_per_class=2)
    run_build(write_recipe(tmp / "recipe.yaml", data), tmp / "out", show_progress=False)
    return tmp / "out"


def _grown(model_dir: Path) -> dict:
    data = tiny_recipe_dict(model_dir, count_per_class=3)
    data["classes"][1]["prompts"].append("the digit one, handwritten")
    data["classes"].append({"id": 3, "name": "three", "prompts": ["a handwritten digit 3"]})
    return data


def test_extend_keeps_old_shards_and_adds_only_new_keys(
    tmp_path: Path, model_dir: Path, parent: Path
) -> None:
    old = {p.name: p.read_bytes() for p in parent.glob("0000*") if p.suffix in (".tar", ".parquet")}
    recipe = write_recipe(tmp_path / "grown.yaml", _grown(model_dir))
    result = run_build(recipe, tmp_path / "child", extend=parent, show_progress=False)
    child = result.output
    for name, data in old.items():
        assert (child / name).read_bytes() == data, f"{name} changed"
    rows = read_rows(child).to_pylist()
    keys = {r["key"] for r in rows}
    assert len(keys) == len(rows) == 3 * 3 + 3  # three classes to 3, a new class of 3
    old_keys = {r["key"] for r in read_rows(parent).to_pylist()}
    assert old_keys < keys
    assert result.generated_now == len(keys) - len(old_keys) == 6
    lineage = result.manifest.lineage
    assert lineage is not None and lineage.parent == parent.name  # by name: published
    assert lineage.recipe_hashes[-1] == result.manifest.recipe_hash
    assert lineage.inherited_shards == [s.shard for s in result.manifest.shards][:2]
    report = validate_dir(child)
    assert report.ok, report.failures + [str(e) for e in report.failed_expectations()]


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seed": 8}, "seed"), ({"sampling": {"steps": 3}}, "sampling.steps")],
)
def test_a_change_that_is_not_an_extension_is_refused_by_name(
    tmp_path: Path, model_dir: Path, parent: Path, change: dict, field: str
) -> None:
    data = tiny_recipe_dict(model_dir, count_per_class=3)
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    recipe = write_recipe(tmp_path / "r.yaml", data)
    with pytest.raises(BuildError, match=rf"not an extension: {field} changed"):
        run_build(recipe, tmp_path / "child", extend=parent, show_progress=False)
    assert not (tmp_path / "child").exists()


def test_publish_extend_grows_latest_and_swaps_it(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "pub"
    base = write_recipe(tmp_path / "base.yaml", tiny_recipe_dict(model_dir, count_per_class=1))
    first = run_build(base, publish_root=root, show_progress=False)
    grown = write_recipe(tmp_path / "grown.yaml", tiny_recipe_dict(model_dir, count_per_class=2))
    second = run_build(grown, publish_root=root, extend="latest", show_progress=False)
    assert second.output != first.output
    assert (root / "latest").resolve() == second.output
    assert second.generated_now == 3
    assert second.manifest.lineage is not None
    assert second.manifest.lineage.parent == first.output.name
