from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthgen.generators.sources.base import SourceError
from synthgen.pipelines.build import BuildError, run_build
from tests.conftest import SPLIT_THRESHOLD, tiny_recipe_dict, write_recipe

COUNTS = {"zero": 6, "one": 2, "two": 4}


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _samples() -> list[tuple[str, bytes]]:
    out = []
    for c, (name, n) in enumerate(COUNTS.items()):
        out += [(name, _png(100 * c + i)) for i in range(n)]
    return out


def make_folder(root: Path) -> Path:
    for i, (name, data) in enumerate(_samples()):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{i:03d}.png").write_bytes(data)
    return root


def make_parquet(path: Path, struct: bool = False) -> Path:
    ids = {"zero": 0, "one": 1, "two": 2}
    rows = [
        {"label": ids[n], "image": {"bytes": d, "path": None} if struct else d}
        for n, d in _samples()
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_webdataset(folder: Path) -> str:
    ids = {"zero": 0, "one": 1, "two": 2}
    folder.mkdir(parents=True, exist_ok=True)
    samples = _samples()
    for shard in range(2):
        with tarfile.open(folder / f"data-{shard:03d}.tar", "w") as tf:
            for i, (name, data) in enumerate(samples[shard::2]):
                for ext, payload in (("png", data), ("cls", str(ids[name]).encode())):
                    info = tarfile.TarInfo(f"s{shard}x{i:03d}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return str(folder / "data-{000..001}.tar")


def _balance_recipe(tmp: Path, model_dir: Path, source: str, **balance: object) -> Path:
    data = tiny_recipe_dict(model_dir)
    del data["count_per_class"]
    data["output"] = {"shard_size": 4}
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}}
    data["balance"] = {"source": source, "target": "max", **balance}
    return write_recipe(tmp / "balance.yaml", data)


@pytest.mark.parametrize("kind", ["folder", "parquet", "parquet-struct", "webdataset"])
def test_readers_agree_on_the_histogram(tmp_path: Path, model_dir: Path, kind: str) -> None:
    from synthgen.generators.sources.open import SourceOptions, open_source, read_histogram
    from synthgen.schemas.recipe import load_recipe

    source = {
        "folder": lambda: str(make_folder(tmp_path / "f")),
        "parquet": lambda: str(make_parquet(tmp_path / "d.parquet")),
        "parquet-struct": lambda: str(make_parquet(tmp_path / "d.parquet", struct=True)),
        "webdataset": lambda: make_webdataset(tmp_path / "wds"),
    }[kind]()
    recipe, _ = load_recipe(_balance_recipe(tmp_path, model_dir, source))
    refs = []
    hist = read_histogram(
        open_source(source, SourceOptions.of(recipe.balance)),
        recipe,
        lambda rec, c: refs.append(rec.reference),
    )
    assert hist == {0: 6, 1: 2, 2: 4}
    assert len(set(refs)) == 12


def _bad(tmp_path: Path, model_dir: Path, source: str, message: str, **balance: object) -> None:
    recipe = _balance_recipe(tmp_path, model_dir, source, **balance)
    with pytest.raises((SourceError, BuildError), match=message):
        run_build(recipe, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_column_named(tmp_path: Path, model_dir: Path) -> None:
    _bad(
        tmp_path,
        model_dir,
        str(make_parquet(tmp_path / "d.parquet")),
        r"no column 'klass' \(columns: label, image\)",
        label_column="klass",
    )


def test_unreadable_image_named(tmp_path: Path, model_dir: Path) -> None:
    root = make_folder(tmp_path / "f")
    (root / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _bad(tmp_path, model_dir, str(root), r"one/broken.png: unreadable image")


def test_unknown_labels_named(tmp_path: Path, model_dir: Path) -> None:
    root = make_folder(tmp_path / "f")
    (root / "seven").mkdir()
    (root / "seven" / "x.png").write_bytes(_png(1))
    _bad(tmp_path, model_dir, str(root), r"labels not among the recipe's classes: 'seven' \(1\)")


def test_empty_and_missing_sources(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    _bad(tmp_path, model_dir, str(tmp_path / "empty"), "the source is empty")
    _bad(tmp_path, model_dir, str(tmp_path / "nowhere"), "balance source not found")
    _bad(tmp_path, model_dir, str(tmp_path / "none-{000..001}.tar"), "not found")


@pytest.fixture
def balanced(balanced_build: Path) -> Path:
    """The build balancing make_folder's source (overgenerate 1.0, at most 6 rounds), shared
    with other modules: read it, never change it."""
    return balanced_build


def test_balanced_build_reaches_exactly_the_target(balanced: Path) -> None:
    manifest = json.loads((balanced / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    bal = manifest["balance"]
    assert bal["before"] == COUNTS
    assert bal["after"] == {"zero": 6, "one": 6, "two": 6}
    assert len(bal["rounds"]) >= 2, "the CLIP threshold rejects some: top-up rounds needed"
    df = pd.read_parquet(balanced / "_index" / "balanced.parquet")
    table = pq.read_table(balanced / "_index" / "balanced.parquet")
    assert table.num_rows == len(df) == 18
    assert df.groupby("class_name").size().to_dict() == {"zero": 6, "one": 6, "two": 6}
    synthetic = df[df.source == "synthetic"]
    assert synthetic.groupby("class_name").size().to_dict() == {"one": 4, "two": 2}
    rows = pd.concat([pd.read_parquet(p) for p in sorted(balanced.glob("0*.parquet"))])
    accepted = set(rows.loc[rows.status == "accepted", "key"])
    assert set(synthetic.key) == accepted
    assert set(df.loc[df.source == "real", "reference"]) == {
        f"{n}/{i:03d}.png" for i, (n, _) in enumerate(_samples())
    }


def test_balanced_report_shows_before_and_after(balanced: Path) -> None:
    report = json.loads((balanced / "report.json").read_text())
    assert report["balance"]["before"]["one"] == 2
    assert "id='balance'" in (balanced / "report.html").read_text()


def test_balanced_build_is_deterministic_and_validates(
    balanced: Path, tmp_path: Path, model_dir: Path
) -> None:
    from synthgen.validators.corpus import validate_dir

    assert validate_dir(balanced).ok
    source = make_folder(tmp_path / "source")
    run_build(
        _balance_recipe(tmp_path, model_dir, str(source), overgenerate=1.0, max_rounds=6),
        tmp_path / "again",
        show_progress=False,
    )
    a = pd.read_parquet(balanced / "_index" / "balanced.parquet")
    b = pd.read_parquet(tmp_path / "again" / "_index" / "balanced.parquet")
    assert list(a.key.fillna("")) == list(b.key.fillna(""))


def test_unfillable_class_fails_naming_it(tmp_path: Path, model_dir: Path) -> None:
    source = make_folder(tmp_path / "source")
    recipe = _balance_recipe(tmp_path, model_dir, str(source), max_rounds=2)
    with pytest.raises(BuildError, match=r"could not fill: one \(short by 4: 0 of \d+"):
        run_build(
            recipe,
            tmp_path / "out",
            overrides=["checks.clip_score.absolute=0.99"],
            show_progress=False,
        )
    assert not (tmp_path / "out" / "manifest.json").exists()


# -- labels that name one class and number another (issue 18, defect 1) ----------------------

SWAPPED = [
    {"id": 0, "name": "1", "prompts": ["a handwritten digit 1"]},
    {"id": 1, "name": "0", "prompts": ["a handwritten digit 0"]},
]


def _swapped_recipe(tmp: Path, model_dir: Path, source: Path, **balance: object) -> Path:
    data = tiny_recipe_dict(model_dir, classes=SWAPPED)
    del data["count_per_class"]
    data["output"] = {"shard_size": 4}
    data["checks"] = {"clip_score": None}
    data["balance"] = {"source": str(source), "target": "max", **balance}
    return write_recipe(tmp / "swapped.yaml", data)


def _int_labels(path: Path) -> Path:
    rows = [{"label": lab, "image": _png(i)} for i, lab in enumerate([0, 0, 0, 0, 0, 1])]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_ambiguous_labels_refused_before_any_output(tmp_path: Path, model_dir: Path) -> None:
    source = _int_labels(tmp_path / "d.parquet")
    with pytest.raises(
        SourceError,
        match=r"label '0' is ambiguous: it is the name of class 1 \('0'\) "
        r"and the id of class 0 \('1'\)",
    ):
        run_build(_swapped_recipe(tmp_path, model_dir, source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_label_type_id_keeps_real_labels_and_tops_up_the_right_class(
    tmp_path: Path, model_dir: Path
) -> None:
    source = _int_labels(tmp_path / "d.parquet")
    recipe = _swapped_recipe(tmp_path, model_dir, source, label_type="id")
    run_build(recipe, tmp_path / "out", show_progress=False)
    df = pd.read_parquet(tmp_path / "out" / "_index" / "balanced.parquet")
    real = df[df.source == "real"].sort_values("reference")
    assert list(real.label) == [0, 0, 0, 0, 0, 1]
    assert list(real.class_name) == ["1", "1", "1", "1", "1", "0"]
    synthetic = df[df.source == "synthetic"]
    assert synthetic.groupby("label").size().to_dict() == {1: 4}
    assert set(synthetic.class_name) == {"0"}
