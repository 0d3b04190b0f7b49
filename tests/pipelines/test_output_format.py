"""The output as other tools read it: strict JSON, typed lean Parquet with `datasets` features,
full provenance in the sidecar, seeded class-mixed shard order, the dataset card."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.generators.planning import plan_shard, shard_ids
from synthgen.generators.regenerate import (
    Inputs,
    ProvenanceNotFound,
    find_provenance,
    regenerate,
)
from synthgen.pipelines.build import run_build
from synthgen.pipelines.writer import shard_rank
from synthgen.schemas.recipe import load_recipe
from synthgen.schemas.records import (
    BUILD_CONSTANTS,
    PROVENANCE_FIELDS,
    SCHEMA_VERSION,
    read_build_constants,
)
from synthgen.storage.tars import iter_tar_samples

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "recipes" / "digits.yaml"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(text: str | bytes) -> Any:
    """What Node's JSON.parse accepts: no NaN, Infinity or -Infinity."""
    return json.loads(text, parse_constant=_reject_constant)


@pytest.fixture
def built(split_build: Path) -> Path:
    """A tiny build with rejects (threshold at about the median tiny-CLIP score), shared with
    other modules: read it, never change it."""
    return split_build


def _sidecars(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for tar in sorted(out.glob("*.tar")):
        for s in iter_tar_samples(tar):
            found[s.key] = strict_loads(s.members["json"])
    return found


def test_every_json_file_and_value_is_strict(built: Path) -> None:
    files = [p for p in built.rglob("*.json") if p.is_file()]
    assert {p.name for p in files} >= {"manifest.json", "report.json", "00000_stats.json"}
    for path in files:
        strict_loads(path.read_bytes())
    assert _sidecars(built), "the build has accepted samples"
    for tar in built.glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    strict_loads(tf.extractfile(m).read())  # type: ignore[union-attr]
    for path in built.glob("*.parquet"):
        schema = pq.read_schema(path)
        for value in (schema.metadata or {}).values():
            strict_loads(value)
    # The DPM-Solver config holds lambda_min_clipped = -inf: written as null.
    constants = read_build_constants(pq.read_schema(built / "00000.parquet"))
    assert constants["scheduler_config"]["lambda_min_clipped"] is None


def test_parquet_is_typed_lean_and_versioned(built: Path) -> None:
    schema = pq.read_schema(built / "00000.parquet")
    assert schema.field("created_at").type == pa.timestamp("ms", tz="UTC")
    checks = schema.field("checks").type
    assert pa.types.is_list(checks) and pa.types.is_struct(checks.value_type)
    assert not set(BUILD_CONSTANTS) & set(schema.names), "constants live in file metadata"
    assert {"recipe_hash", "created_at", "key", "class_label"} <= set(schema.names)
    meta = json.loads(schema.metadata[b"synthgen"])
    assert (meta["schema"], meta["schema_version"]) == ("synthgen.sample", SCHEMA_VERSION)
    assert set(meta["build"]) == set(BUILD_CONSTANTS)
    row = pq.read_table(built / "00000.parquet").to_pylist()[0]
    assert {c["name"] for c in row["checks"]} >= {"clip_score"}
    assert row["created_at"].tzinfo is not None


def test_datasets_reads_class_names_and_images(built: Path, tmp_path: Path) -> None:
    import datasets

    files = [str(p) for p in sorted(built.glob("0*.parquet"))]
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path))["train"]
    feature = ds.features["class_label"]
    assert isinstance(feature, datasets.ClassLabel)
    assert feature.names == ["zero", "one", "two"]
    assert ds.features["class_label"].int2str(2) == "two"
    rejected = [r for r in ds if r["status"] == "rejected"]
    assert rejected and all(isinstance(r["rejected_image"], PIL.Image.Image) for r in rejected)
    assert isinstance(ds.features["rejected_image"], datasets.Image)
    assert sorted(ds["key"]) == sorted(
        r["key"] for f in files for r in pq.read_table(f).to_pylist()
    )


def test_sidecar_has_full_provenance_and_parquet_plus_constants_equals_it(built: Path) -> None:
    sidecars = _sidecars(built)
    for key, prov in sidecars.items():
        assert set(prov) == {*PROVENANCE_FIELDS, "scores"}
        merged = find_provenance(built, key)
        assert {k: merged[k] for k in PROVENANCE_FIELDS} == {k: prov[k] for k in PROVENANCE_FIELDS}
    with pytest.raises(ProvenanceNotFound, match="found 0 times"):
        find_provenance(built, "no-such-key")


def test_a_rejected_sample_regenerates_from_parquet_and_constants(built: Path) -> None:
    rows = [r for p in sorted(built.glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    rejected = next(r for r in rows if r["status"] == "rejected")
    prov = find_provenance(built, rejected["key"])
    assert regenerate(prov, Inputs.for_build(built)) == rejected["rejected_image"]["bytes"]
    assert rejected["rejected_image"]["path"] == f"{rejected['key']}.png"


def test_shard_order_is_seeded_and_tar_and_parquet_agree(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    for entry in manifest["shards"]:
        shard = entry["shard"]
        keys = pq.read_table(built / f"{shard:05d}.parquet", columns=["key"])["key"].to_pylist()
        ranks = [shard_rank(manifest["recipe_hash"], shard, k) for k in keys]
        assert ranks == sorted(ranks)
        tar_keys = [s.key for s in iter_tar_samples(built / f"{shard:05d}.tar")]
        assert tar_keys == [k for k in keys if k in set(tar_keys)]


def test_every_slice_of_20_of_the_full_digits_plan_mixes_classes() -> None:
    """The shipped digits recipe as planned (500 samples): the order, not the images."""
    recipe, _ = load_recipe(DIGITS)
    for shard in shard_ids(recipe):
        planned = plan_shard(recipe, shard)
        order = sorted(planned, key=lambda r: shard_rank(recipe.hash, shard, r.key))
        labels = [r.class_label for r in order]
        for i in range(max(1, len(labels) - 19)):
            assert len(set(labels[i : i + 20])) >= 3, (shard, i)


def test_a_digits_build_mixes_classes_in_every_slice_of_20(tmp_path: Path) -> None:
    result = run_build(
        DIGITS,
        tmp_path / "out",
        # one shard of 20 (2 per class, every one accepted), model calls without padding
        overrides=[
            "count_per_class=2",
            "output.shard_size=20",
            "model.compute_batch=20",
            "batch_size=20",
            "scoring.batch_size=20",
        ],
        show_progress=False,
    )
    for tar in sorted(result.output.glob("*.tar")):
        labels = [int(s.members["cls"]) for s in iter_tar_samples(tar)]
        assert len(labels) >= 20
        for i in range(len(labels) - 19):
            assert len(set(labels[i : i + 20])) >= 3, (tar.name, i, labels)


def test_dataset_card_parses_and_load_dataset_reads_the_build(built: Path, tmp_path: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard, DatasetCardData

    card = DatasetCard.load(built / "README.md")
    assert isinstance(card.data, DatasetCardData)
    data = card.data.to_dict()
    manifest = json.loads((built / "manifest.json").read_text())
    assert data["size_categories"] == ["n<1K"]
    assert data["license"] == "unknown"
    assert manifest["recipe_hash"] in card.text
    assert "Known limitations" in card.text and "| 2 | two |" in card.text
    tars = [t for c in data["configs"] for f in c["data_files"] for t in f["path"]]
    listed = {n for s in manifest["shards"] if s["accepted"] for n in s["files"]}
    assert set(tars) == {n for n in listed if n.endswith(".tar")}

    ds = datasets.load_dataset(str(built), cache_dir=str(tmp_path))["train"]
    assert len(ds) == manifest["counts"]["accepted"]
    assert isinstance(ds.features["png"], datasets.Image)
    assert ds.features["cls"].names == ["zero", "one", "two"]
    full = datasets.load_dataset(str(built), "provenance", cache_dir=str(tmp_path))["train"]
    assert {r["json"]["class_name"] for r in full} <= {"zero", "one", "two"}
