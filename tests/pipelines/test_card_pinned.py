"""The dataset card's text, pinned: from a fixed manifest and report.json it hashes to the
values recorded here (a change to how the card is put together that changes no byte keeps
these passing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from synthgen.pipelines.card import card_text
from synthgen.schemas.manifest import REPORT_JSON, FileInfo, Manifest, ModelInfo, ShardEntry
from synthgen.validators.report import report_json
from tests.validators.report_fixture import report_data

PINNED = {
    "full": "8adf4f5b84ff0e32b5e919da0ce0f94bf7520a0ef719803be9d58f22c3e9c30c",
    "plain": "e146a966786b7ab5dfc5e03657b379b545376f8206ac433b6010453c54f5bbb8",
}


def _build(tmp: Path, name: str) -> tuple[Path, Manifest]:
    """A build folder under `tmp` (run from `tmp`) and its manifest."""
    full = name == "full"
    data = report_data(tmp / f"build-{name}", reference=full, balance=full)
    manifest = data.manifest
    info = FileInfo(sha256="1" * 64, bytes=10)
    shards = [
        ShardEntry(
            shard=s,
            files={f"{s:05d}.tar": info, f"{s:05d}.parquet": info},
            accepted=accepted,
            rejected=1,
            failed=0,
        )
        for s, accepted in ((0, 4), (1, 0), (2, 1))
    ]
    update: dict[str, object] = {"shards": shards}
    if full:
        model = tmp / "digits-model"
        model.mkdir()
        training = {
            "data": "scikit-learn load_digits; ...",
            "diffusion": {"config": {"layout": {"image_size": 16}}},
        }
        (model / "training.json").write_text(json.dumps(training))
        # a relative model path, from the working folder `tmp` (the card shows it as it is)
        update["model"] = ModelInfo(path=model.name, sha256="2" * 64, class_="SDPipeline")
        recipe = json.loads(json.dumps(manifest.recipe))
        recipe["model"]["license"] = "OpenRAIL-M "
        recipe["output"]["image_format"] = "jpeg"
        update["recipe"] = recipe
        report = report_json(data)
        report["scores"]["flat"] = {"mean": 0.123456}
        (data.out / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str))
    return data.out, manifest.model_copy(update=update)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_card_text_is_pinned(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out, manifest = _build(tmp_path, name)
    text = card_text(out, manifest)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == PINNED[name]


def test_the_card_fixture_fills_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out, manifest = _build(tmp_path, "full")
    text = card_text(out, manifest)
    for part in ("## Rendering domain", "balanced.parquet", "license: openrail-m", "KEY.jpg"):
        assert part in text, part
    assert "- flat: mean 0.1235" in text and "expectations: 6/7 passed" in text
    plain = card_text(*_build(tmp_path, "plain"))
    assert "no report.json" in plain and "## Rendering domain" not in plain
