"""Planted near-copies: copies of a build's own images (exact, re-encoded, shifted by a pixel)
in a reference set are flagged, each with its reference, and nothing else is — by
`synthgen validate/report --reference` on the finished build and by the build's own
`near_copy` step (digits model, tiny counts)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthgen.pipelines.build import run_build
from synthgen.pipelines.cli import main
from synthgen.storage.tars import iter_tar_samples

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "digits.yaml"
CLIP = ROOT / "models" / "digits-clip"
OVERRIDES = ["count_per_class=2", "output.shard_size=10"]
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _shifted(data: bytes) -> bytes:
    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
    a = np.roll(a, 1, axis=1)
    a[:, 0] = 0
    return _png(Image.fromarray(a))


def _jpeg(data: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(build, reference folder, planted key -> its reference path in the folder)."""
    tmp = tmp_path_factory.mktemp("memorization")
    out = run_build(RECIPE, tmp / "out", overrides=OVERRIDES, show_progress=False).output
    images: dict[str, tuple[str, bytes]] = {}
    for tar in sorted(out.glob("*.tar")):
        for sample in iter_tar_samples(tar, extensions={"png", "json"}):
            cls = json.loads(sample.members["json"])["class_name"]
            images[sample.key] = (cls, sample.members["png"])
    keys = sorted(images)
    ref = tmp / "reference"
    plants = {}
    for key, (kind, alter, suffix) in zip(
        (keys[0], keys[5], keys[11]),
        (("copy", lambda b: b, "png"), ("jpeg", _jpeg, "jpg"), ("shift", _shifted, "png")),
        strict=True,
    ):
        cls, data = images[key]
        path = ref / cls / f"planted-{kind}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(alter(data))
        plants[key] = f"{cls}/planted-{kind}.{suffix}"
    # unrelated real digits, five per class, from the recipe's own reference data
    table = pq.read_table(ROOT / "recipes" / "data" / "digits-train.parquet").to_pylist()
    seen: dict[str, int] = {}
    for i, row in enumerate(table):
        cls = NAMES[int(row["label"])]
        if seen.get(cls, 0) < 5:
            seen[cls] = seen.get(cls, 0) + 1
            (ref / cls).mkdir(parents=True, exist_ok=True)
            (ref / cls / f"real-{i:04d}.png").write_bytes(row["image"])
    return out, ref, plants


def test_validate_reference_flags_each_planted_copy_and_nothing_else(
    planted: tuple[Path, Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, ref, plants = planted
    assert main(["validate", str(out)]) == 0
    capsys.readouterr()
    code = main(["validate", str(out), "--reference", str(ref), "--clip-model", str(CLIP)])
    lines = [x for x in capsys.readouterr().out.splitlines() if "near_copy:" in x]
    assert code != 0
    flagged = {line.split("near_copy: ")[1].split(" ")[0]: line for line in lines}
    assert set(flagged) == set(plants), lines
    for key, where in plants.items():
        assert f"near copy of {where}" in flagged[key]
    cache = list((out / ".synthgen" / "references").glob("reference-*.parquet"))
    assert len(cache) == 2  # the build's own reference, and this one


def test_report_reference_adds_metrics_and_pairs_without_rebuilding(
    planted: tuple[Path, Path, dict[str, str]],
) -> None:
    out, ref, plants = planted
    shards = {p.name: p.stat().st_mtime_ns for p in out.glob("0*")}
    assert main(["report", str(out), "--reference", str(ref), "--clip-model", str(CLIP)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0*")} == shards
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["reference"] == ref.name  # published by name
    assert report["metrics"]["reference_images"] == 50 + len(plants)
    pairs = {p["key"]: p for p in report["nearest_pairs"]}
    for key, where in plants.items():
        assert pairs[key]["nearest_ref"] == where
    page = (out / "report.html").read_text()
    for section in ("metrics", "embedding-map", "nearest", "timing"):
        assert f"id='{section}'" in page


@pytest.mark.slow
def test_build_near_copy_step_rejects_the_planted_copies(
    planted: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    _, ref, plants = planted
    result = run_build(
        RECIPE,
        tmp_path / "again",
        overrides=[*OVERRIDES, f"reference.source={ref}", "reference.label_column=label"],
        show_progress=False,
    )
    rows = []
    for path in sorted(result.output.glob("*.parquet")):
        rows += pq.read_table(
            path, columns=["key", "status", "reject_reason", "nearest_ref", "nearest_ref_sim"]
        ).to_pylist()
    rejected = {r["key"]: r for r in rows if r["reject_reason"] == "near_copy"}
    assert set(rejected) == set(plants)
    for key, where in plants.items():
        assert rejected[key]["nearest_ref"] == where
    assert all(r["nearest_ref"] is not None for r in rows)
