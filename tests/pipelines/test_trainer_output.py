"""What a trainer reads: the dataset card's `datasets` view (image + named labels, a torch
DataLoader collates it), the balanced index kept apart from the shard Parquet files, the
reader of real and synthetic samples together, the shipped balancing recipes, and the card's
wording (counts that agree in number, the digits default's rendering domain)."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

import synthgen
from synthgen.pipelines.build import run_build
from synthgen.pipelines.card import card_text
from synthgen.pipelines.output import BuildError
from synthgen.schemas.manifest import Manifest
from synthgen.storage.tars import iter_tar_samples
from tests.conftest import run_cli, tiny_recipe_dict, write_recipe

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["zero", "one", "two"]


def _manifest(out: Path) -> Manifest:
    return Manifest.model_validate_json((out / "manifest.json").read_bytes())


def _front_matter(out: Path) -> dict[str, Any]:
    text = (out / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert isinstance(front, dict)
    return front


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("trainer")
    data = tiny_recipe_dict(model_dir, checks={"clip_score": {"absolute": -1.0}})
    run_build(write_recipe(tmp / "r.yaml", data), tmp / "out", show_progress=False)
    return tmp / "out"


@pytest.fixture
def balanced(balanced_build: Path) -> Path:
    """The build balancing make_folder's source (its `source/` beside it), shared with other
    modules: read it, or copy it before changing it."""
    return balanced_build


def _load(out: Path, tmp_path: Path, *args: str, **kwargs: Any) -> Any:
    import datasets

    return datasets.load_dataset(
        *(args or (str(out),)), split="train", cache_dir=str(tmp_path / "hf"), **kwargs
    )


# -- the dataset card's `datasets` view ---------------------------------------------------


def test_card_declares_the_training_view(build: Path) -> None:
    front = _front_matter(build)
    assert "&id" not in (build / "README.md").read_text(encoding="utf-8")  # no YAML anchors
    tars = [n for s in _manifest(build).shards if s.accepted for n in s.files if n.endswith(".tar")]
    configs = {c["config_name"]: c for c in front["configs"]}
    assert list(configs) == ["default", "provenance"]
    assert configs["default"]["default"] is True
    for config in configs.values():
        assert config["data_files"] == [{"split": "train", "path": tars}]
    infos = {i["config_name"]: i for i in front["dataset_info"]}
    assert list(infos) == ["default"]  # `provenance`: every member, features inferred
    features = {f["name"]: f["dtype"] for f in infos["default"]["features"]}
    assert features == {
        "png": "image",
        "cls": {"class_label": {"names": {"0": "zero", "1": "one", "2": "two"}}},
        "__key__": "string",
    }


def test_load_dataset_gives_images_and_named_labels(build: Path, tmp_path: Path) -> None:
    import datasets
    from PIL import Image

    ds = _load(build, tmp_path)
    manifest = _manifest(build)
    assert ds.num_rows == manifest.counts.accepted > 0
    assert list(ds.features) == ["png", "cls", "__key__"]
    assert ds.features["png"] == datasets.Image()
    assert ds.features["cls"] == datasets.ClassLabel(names=NAMES)
    first = ds[0]
    assert isinstance(first["png"], Image.Image) and first["png"].size == (32, 32)
    rows = pads.dataset(sorted(glob.glob(str(build / "*.parquet")))).to_table(
        columns=["key", "class_label", "status"]
    )
    accepted = {r["key"]: r["class_label"] for r in rows.to_pylist() if r["status"] == "accepted"}
    assert dict(zip(ds["__key__"], ds["cls"], strict=True)) == accepted  # joins on the key
    named = ds.rename_columns({"png": "image", "cls": "label"})
    assert named.features["label"].names == NAMES


def test_default_view_collates_in_a_torch_dataloader(build: Path, tmp_path: Path) -> None:
    import torch

    ds = _load(build, tmp_path).with_format("torch")
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4))
    assert sum(len(b["cls"]) for b in batches) == _manifest(build).counts.accepted
    first = batches[0]
    assert first["cls"].dtype == torch.int64 and len(first["cls"]) == 4
    assert isinstance(first["png"], torch.Tensor) and first["png"].dtype == torch.uint8
    assert first["png"].shape[0] == 4 and 32 in first["png"].shape[1:]
    assert len(first["__key__"]) == 4


def test_provenance_config_keeps_every_member(build: Path, tmp_path: Path) -> None:
    ds = _load(build, tmp_path, str(build), "provenance")
    assert {"png", "cls", "txt", "json"} <= set(ds.features)
    first = ds[0]
    assert first["json"]["key"] == first["__key__"]
    assert first["txt"] == first["json"]["prompt"]


def test_shard_parquet_glob_reads_with_datasets(build: Path, tmp_path: Path) -> None:
    import datasets

    rows = _load(build, tmp_path, "parquet", data_files=str(build / "*.parquet"))
    assert rows.num_rows == _manifest(build).counts.attempted
    assert rows.features["class_label"] == datasets.ClassLabel(names=NAMES)


# -- the card's wording ---------------------------------------------------------------------


def test_card_counts_agree_in_number(build: Path) -> None:
    manifest = _manifest(build)

    def card(accepted: int, rejected: int, failed: int = 0) -> str:
        counts = manifest.counts.model_copy(
            update={"accepted": accepted, "rejected": rejected, "failed": failed}
        )
        return _flat(card_text(build, manifest.model_copy(update={"counts": counts})))

    one = card(1, 1)
    assert "1 accepted image of 3 classes" in one
    assert "1 generated image was rejected by its checks" in one
    assert "images were rejected" not in one
    many = card(5, 3, failed=1)
    assert "5 accepted images of 3 classes" in many
    assert "3 generated images were rejected by its checks, 1 failed to generate" in many


def test_card_states_the_rendering_domain_of_the_digits_default(build: Path) -> None:
    manifest = _manifest(build)
    assert "## Rendering domain" not in card_text(build, manifest)  # a model of its own
    digits_model = manifest.model.model_copy(update={"path": str(ROOT / "models" / "digits-ldm")})
    text = card_text(build, manifest.model_copy(update={"model": digits_model}))
    assert "## Rendering domain" in text
    flat = _flat(text)
    assert "scikit-learn's 8x8 handwritten digits rendered at 16x16" in flat
    assert "upsampled bilinearly (`align_corners=False`)" in flat
    assert "`synthgen.generators.training.data.to_images(x, 16)`" in flat
    assert "Tested on raw 8x8 digits" in flat


def test_the_stated_rendering_is_the_default_models_training_data() -> None:
    """What the card and docs say is what `train-default` and the shipped data do."""
    import io

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from synthgen.generators.training.data import load_split, to_images

    training = json.loads((ROOT / "models" / "digits-ldm" / "training.json").read_text())
    assert training["diffusion"]["config"]["layout"]["image_size"] == 16
    split = load_split()
    x = torch.tensor(split.x_train[:3] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    bilinear = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    rendered = to_images(split.x_train[:3], 16)
    assert torch.allclose(rendered, bilinear.clamp(0, 1).repeat(1, 3, 1, 1))
    shipped = pq.read_table(ROOT / "recipes" / "data" / "digits-train.parquet").slice(0, 3)
    for data, img in zip(shipped.column("image").to_pylist(), rendered, strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        expected = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(pixels, expected)


# -- the balanced index: apart from the shards, read with its images -----------------------


def test_balanced_index_is_apart_from_the_shard_parquet_files(balanced: Path) -> None:
    manifest = _manifest(balanced)
    assert manifest.balance is not None
    assert manifest.balance.balanced_index == "_index/balanced.parquet"
    assert "_index/balanced.parquet" in manifest.files
    assert (balanced / "_index" / "balanced.parquet").is_file()
    assert not (balanced / "balanced.parquet").exists()
    shards = sorted(n for s in manifest.shards for n in s.files if n.endswith(".parquet"))
    matched = sorted(Path(p).name for p in glob.glob(str(balanced / "*.parquet")))
    assert matched == shards
    by_glob = pads.dataset(sorted(glob.glob(str(balanced / "*.parquet"))))
    assert by_glob.count_rows() == manifest.counts.attempted
    assert "status" in by_glob.schema.names and "source" not in by_glob.schema.names
    whole = pads.dataset(str(balanced), format="parquet", exclude_invalid_files=True)
    assert sorted(Path(f).name for f in whole.files) == shards
    assert whole.count_rows() == manifest.counts.attempted


def test_balanced_card_names_the_index(balanced: Path) -> None:
    text = _flat((balanced / "README.md").read_text(encoding="utf-8"))
    assert "`_index/balanced.parquet`: the balanced training index" in text
    assert "12 real samples from the source, 6 synthetic samples from this build" in text
    assert "`synthgen.load(DIR).balanced()`" in text


def test_balanced_reader_gives_real_and_synthetic_together(balanced: Path) -> None:
    source = balanced.parent / "source"
    index = synthgen.load(balanced).balanced()
    assert index.table.equals(pq.read_table(balanced / "_index" / "balanced.parquet"))
    assert index.counts() == {
        "zero": {"real": 6, "synthetic": 0},
        "one": {"real": 2, "synthetic": 4},
        "two": {"real": 4, "synthetic": 2},
    }
    samples = list(index.samples())
    assert [s.source for s in samples] == index.table.column("source").to_pylist()
    assert [s.label for s in samples] == index.table.column("label").to_pylist()
    tars = {
        t.key: t.members["png"] for tar in balanced.glob("*.tar") for t in iter_tar_samples(tar)
    }
    for s in samples:
        if s.source == "real":
            assert s.reference is not None and s.data == (source / s.reference).read_bytes()
            assert s.image().size == (8, 8)
        else:
            assert s.key is not None and s.data == tars[s.key]
            assert s.image().size == (32, 32)
    pairs = list(index)
    assert len(pairs) == len(index) == 18
    assert [label for _, label in pairs] == index.table.column("label").to_pylist()


def test_balanced_reader_names_a_moved_source(balanced: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(balanced, out)
    moved = tmp_path / "moved"
    shutil.copytree(balanced.parent / "source", moved)
    index = synthgen.load(out).balanced()
    # the recorded source is still there: reading works from the copy too
    assert len(list(index.samples())) == 18
    gone = synthgen.load(out).balanced(source=tmp_path / "nowhere")
    with pytest.raises(BuildError, match=r"nowhere: balance source not found; pass balanced\("):
        list(gone.samples())
    assert len(list(synthgen.load(out).balanced(source=moved))) == 18
    cut = sorted((moved / "two").iterdir())[0]
    cut.unlink()
    with pytest.raises(BuildError, match=rf"two/{cut.name} is in the balanced index but not"):
        list(synthgen.load(out).balanced(source=moved).samples())


def test_an_older_build_with_the_index_beside_the_shards_still_reads(
    balanced: Path, tmp_path: Path
) -> None:
    from synthgen.validators.corpus import validate_dir

    out = tmp_path / "older"
    shutil.copytree(balanced, out)
    (out / "_index" / "balanced.parquet").rename(out / "balanced.parquet")
    (out / "_index").rmdir()
    data = json.loads((out / "manifest.json").read_text())
    data["balance"]["balanced_index"] = "balanced.parquet"
    data["files"]["balanced.parquet"] = data["files"].pop("_index/balanced.parquet")
    (out / "manifest.json").write_text(json.dumps(data))
    assert validate_dir(out).ok, validate_dir(out).failures
    index = synthgen.load(out).balanced()
    assert index.path == out / "balanced.parquet"
    assert len(list(index)) == 18


def test_balanced_reader_refuses_a_build_that_did_not_balance(build: Path) -> None:
    with pytest.raises(BuildError, match=r"not a balancing build .*no balanced index"):
        synthgen.load(build).balanced()


# -- the shipped balancing recipes -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["digits-balance.yaml", "digits-balance-img2img.yaml", "digits-balance-lora.yaml"]
)
def test_shipped_balancing_recipes_plan_as_shipped(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    done = run_cli("plan", f"recipes/{name}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "balance source not found" not in done.stdout + done.stderr
    assert "three" in done.stdout and "digits-imbalanced.parquet" in done.stdout


def test_shipped_imbalanced_source_is_the_documented_cut() -> None:
    from collections import Counter

    cut = pq.read_table(ROOT / "recipes" / "data" / "digits-imbalanced.parquet")
    train = pq.read_table(ROOT / "recipes" / "data" / "digits-train.parquet")
    counts = Counter(cut.column("label").to_pylist())
    full = Counter(train.column("label").to_pylist())
    assert {d: counts[d] for d in "358"} == {"3": 5, "5": 5, "8": 5}
    assert all(counts[d] == full[d] for d in "0124679")
    rows = train.to_pylist()
    first = {d: [r["image"] for r in rows if r["label"] == d][:5] for d in "358"}
    for d in "358":
        assert [r["image"] for r in cut.to_pylist() if r["label"] == d] == first[d]
