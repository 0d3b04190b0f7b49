"""validate_dir and the report on a corpus written by the writer itself (no build driver):
typed manifest, declared score ranges, the embedding scorer shown in the report."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.pipelines.writer import write_shard
from synthgen.schemas.manifest import Counts, Manifest, ModelInfo
from synthgen.schemas.records import BUILD_FIELDS, JSON_FIELDS, BuildContext, canonical_json
from synthgen.validators.apply import apply_checks
from synthgen.validators.build_checks import make_checks
from synthgen.validators.corpus import validate_dir
from synthgen.validators.report import load_report_data, report_json, write_report
from synthgen.validators.scoring import (
    ScoreSamples,
    build_scorers,
    score_columns,
    score_samples,
    scorer_provenance,
)
from tests.validators.conftest import make_samples, recipe_with, scoring


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("written")
    recipe = recipe_with(
        model_dir,
        scoring=scoring(model_dir, "clip", "clip_embedding", "image_stats"),
        checks={"clip_score": None, "label_margin": {"kept_fraction": 0.5}},
    )
    scorers = build_scorers(recipe, model_dir)
    columns = score_columns(scorers)
    checks, _ = make_checks(recipe, columns)
    samples = score_samples(ScoreSamples(scorers, "cpu").load_model(), make_samples(12))
    # a fixed cut instead of the build-wide quantile step: about half of each class fails
    margin = sorted(s.scores["clip_tiny_clip_label_margin"] for s in samples)[6]
    cut = [c if c.name != "label_margin" else type(c)(c.name, c.column, margin) for c in checks]
    decided = [apply_checks(s, cut) for s in samples]
    # every build constant: JSON text where the record declares JSON, else a placeholder
    values: dict[str, object] = {n: "{}" if n in JSON_FIELDS else "x" for n in BUILD_FIELDS}
    values.update(
        class_names="",
        created_at="2024-01-01T00:00:00Z",
        steps=2,
        guidance_scale=1.0,
        compute_batch=4,
        recipe_name=recipe.name,
        recipe_hash=recipe.hash,
        scheduler_config="{}",
        image_encoding="{}",
        library_versions="{}",
        generation_options="{}",
        scorers=canonical_json(scorer_provenance(scorers)),
        image_format="png",
    )
    ctx = BuildContext(**values)  # type: ignore[arg-type]
    shards = sorted({s.request.shard for s in decided})
    stats = [
        write_shard(out, shard, [s for s in decided if s.request.shard == shard], ctx, columns)
        for shard in shards
    ]
    accepted = sum(s.accepted for s in stats)
    planned: dict[str, int] = {}
    for s in decided:
        planned[s.request.class_name] = planned.get(s.request.class_name, 0) + 1
    manifest = Manifest(
        status="complete",
        recipe_name=recipe.name,
        recipe_hash=recipe.hash,
        recipe=recipe.model_dump(mode="json"),
        created_at="2024-01-01T00:00:00Z",
        finished_at="2024-01-01T00:01:00Z",
        versions={},
        model=ModelInfo(path="sd", sha256="0" * 64, class_="StableDiffusionPipeline"),
        scorers=scorer_provenance(scorers),
        score_columns=columns,
        counts=Counts(
            planned=len(decided),
            attempted=len(decided),
            accepted=accepted,
            rejected=len(decided) - accepted,
            planned_per_class=planned,
        ),
        shards=[s.entry() for s in stats],
    )
    (out / "manifest.json").write_bytes(manifest.to_json())
    return out


def test_validate_dir_checks_declared_ranges_and_vectors(written: Path) -> None:
    report = validate_dir(written)
    assert report.ok, (report.failures, report.failed_expectations())
    checked = {
        (e.expectation, e.kwargs.get("column"))
        for e in report.expectations
        if e.dataset == "samples"
    }
    assert ("expect_column_values_to_be_between", "clip_tiny_clip_score") in checked
    assert ("expect_column_values_to_not_be_null", "clip_tiny_clip_embedding") in checked
    assert ("expect_column_values_to_be_between", "clip_tiny_clip_embedding__length") in checked
    info = report.as_info()
    assert info.success and len(info.expectations) == len(report.expectations)


def _rehash(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        for name, info in entry["files"].items():
            data = (out / name).read_bytes()
            info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_out_of_range_scores_and_embeddings_fail_validation(written: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(written, bad)
    table = pq.read_table(bad / "00000.parquet")
    emb = table.column("clip_tiny_clip_embedding").to_pylist()
    emb[0] = [1.5] * len(emb[0])  # not a unit vector
    bright = table.column("brightness").to_pylist()
    bright[1] = 1.5
    table = table.set_column(
        table.schema.get_field_index("clip_tiny_clip_embedding"),
        table.schema.field("clip_tiny_clip_embedding"),
        pa.array(emb, table.schema.field("clip_tiny_clip_embedding").type),
    )
    table = table.set_column(
        table.schema.get_field_index("brightness"),
        table.schema.field("brightness"),
        pa.array(bright, pa.float32()),
    )
    pq.write_table(table, bad / "00000.parquet")
    _rehash(bad)
    report = validate_dir(bad)
    failed = {(e.expectation, e.kwargs.get("column")) for e in report.failed_expectations()}
    assert report.failures == [], report.failures
    assert failed == {
        ("expect_column_values_to_be_between", "clip_tiny_clip_embedding__max"),
        ("expect_column_values_to_be_between", "brightness"),
    }


def test_report_shows_the_embedding_scorer(written: Path) -> None:
    data = load_report_data(written)
    assert len(data.rows) == 12 and "rejected_image" not in data.rows
    rows = data.rows
    for cls in ("zero", "one", "two"):
        mine = rows[rows.class_name == cls]
        assert len(data.accepted_images.get(cls, [])) == (mine.status == "accepted").sum()
        assert len(data.rejected_images.get(cls, [])) == (mine.status == "rejected").sum()
    assert data.rejected_images, "the fixture has rejects"
    report = report_json(data)
    spread = report["embedding_spread"]["clip_tiny_clip_embedding"]
    assert set(spread) == {"zero", "one", "two"}
    for entry in spread.values():
        assert entry["n_accepted"] + entry["n_rejected"] == 4
        for status in ("accepted", "rejected"):
            value = entry[status]
            assert (value is None) == (entry[f"n_{status}"] == 0)
            assert value is None or 0 <= value <= 2
    assert "clip_tiny_clip_embedding" not in report["scores"], "vectors get no histogram"

    write_report(written)
    page = (written / "report.html").read_text()
    assert "id='embeddings'" in page and "Embedding spread per class" in page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert json.loads((written / "report.json").read_text())["embedding_spread"] == json.loads(
        json.dumps(report["embedding_spread"])
    )


def test_report_without_embeddings_has_no_embedding_section(written: Path) -> None:
    data = load_report_data(written)
    manifest = data.manifest.model_copy(
        update={"score_columns": [c for c in data.manifest.score_columns if not c.is_vector]}
    )
    report = report_json(type(data)(data.out, manifest, data.rows, {}, {}))
    assert report["embedding_spread"] == {}


def test_check_tar_finds_split_and_repeated_samples(written: Path, tmp_path: Path) -> None:
    import io
    import tarfile

    from synthgen.storage.tars import iter_tar_samples
    from synthgen.validators.corpus import check_tar, read_rows

    rows = read_rows(written, [0])
    assert check_tar(written, 0, rows) == []
    with tarfile.open(written / "00000.tar") as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]  # type: ignore[union-attr]
    first_key = members[0][0].name.split(".")[0]
    # move the first sample's last member to the end, and repeat one member in place
    reordered = [*members[:3], members[1], *members[4:], members[3]]
    bad = tmp_path / "00000.tar"
    with tarfile.open(bad, "w") as tf:
        for m, data in reordered:
            tf.addfile(m, io.BytesIO(data))
    runs = [s.key for s in iter_tar_samples(bad)]
    assert runs.count(first_key) == 2
    failures = check_tar(tmp_path, 0, rows)
    assert any(f"key {first_key} is not contiguous" in f for f in failures), failures
    assert any("duplicate member" in f for f in failures), failures


def test_embedding_map_axes_are_the_principal_components_with_a_fixed_sign() -> None:
    import numpy as np

    from synthgen.validators.report import _top_components

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 40)) * np.linspace(4.0, 0.2, 40)
    centred = rows - rows.mean(0)
    xy, explained = _top_components(centred)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    for axis in range(2):  # the same axes as a full SVD, up to sign
        assert abs(abs(np.corrcoef(xy[:, axis], centred @ vt[axis])[0, 1]) - 1) < 1e-9
    assert explained == pytest.approx((sv**2 / (sv**2).sum())[:2].tolist())
    # the axes' signs come from their loadings (the same for negated data), not from the
    # solver: negated rows land at negated coordinates
    flipped, _ = _top_components(-centred)
    assert np.allclose(flipped, -xy)
    assert _top_components(centred[:1])[1] == []
