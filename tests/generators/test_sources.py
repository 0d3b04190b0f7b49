"""Balance sources: label resolution and the source root (issue 18, defect 1 and symlinks)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthgen.generators.sources.base import SourceError
from synthgen.generators.sources.folder_source import FolderSource
from synthgen.generators.sources.open import (
    SourceOptions,
    label_resolver,
    open_source,
    read_histogram,
)
from synthgen.generators.sources.parquet_source import ParquetSource
from synthgen.generators.sources.webdataset_source import WebDatasetSource
from synthgen.schemas.recipe import Recipe, recipe_from_dict

# Class names are slugs, so "0" and "1" are valid names: here each is the other's id.
SWAPPED = [
    {"id": 0, "name": "1", "prompts": ["a one"]},
    {"id": 1, "name": "0", "prompts": ["a zero"]},
]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _recipe(classes: list[dict[str, Any]], source: str = "s", **balance: Any) -> Recipe:
    return recipe_from_dict(
        {
            "name": "b",
            "model": {"path": "m"},
            "scoring": {"clip_model": "c"},
            "classes": classes,
            "balance": {"source": source, **balance},
        }
    )


def _parquet(path: Path, labels: list[Any]) -> Path:
    rows = [{"label": lab, "image": _png(i)} for i, lab in enumerate(labels)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _histogram(recipe: Recipe, source: Path | str) -> dict[int, int]:
    assert recipe.balance is not None
    return read_histogram(open_source(str(source), SourceOptions.of(recipe.balance)), recipe)


# -- labels --------------------------------------------------------------------------------


def test_label_that_is_one_class_name_and_another_id_is_refused(tmp_path: Path) -> None:
    source = _parquet(tmp_path / "d.parquet", [0, 0, 0, 0, 0, 1])  # int64 labels
    with pytest.raises(
        SourceError,
        match=r"d.parquet#row=0: label '0' is ambiguous: it is the name of class 1 \('0'\) "
        r"and the id of class 0 \('1'\); set balance.label_type",
    ):
        _histogram(_recipe(SWAPPED), source)


def test_label_type_resolves_the_ambiguity(tmp_path: Path) -> None:
    source = _parquet(tmp_path / "d.parquet", [0, 0, 0, 0, 0, 1])
    assert _histogram(_recipe(SWAPPED, label_type="id"), source) == {0: 5, 1: 1}
    assert _histogram(_recipe(SWAPPED, label_type="name"), source) == {0: 1, 1: 5}


def test_label_type_is_strict(tmp_path: Path) -> None:
    classes = [
        {"id": 0, "name": "zero", "prompts": ["z"]},
        {"id": 1, "name": "one", "prompts": ["o"]},
    ]
    by_id = label_resolver(_recipe(classes, label_type="id"))
    by_name = label_resolver(_recipe(classes, label_type="name"))
    auto = label_resolver(_recipe(classes))
    assert (by_id("1"), by_id("one"), by_id("٣"), by_id("9" * 5000)) == (1, None, None, None)
    assert (by_name("1"), by_name("one")) == (None, 1)
    assert (auto("1"), auto("one"), auto("two")) == (1, 1, None)


def test_name_equal_to_its_own_id_is_not_ambiguous(tmp_path: Path) -> None:
    classes = [
        {"id": 3, "name": "3", "prompts": ["x"]},
        {"id": 4, "name": "four", "prompts": ["y"]},
    ]
    source = _parquet(tmp_path / "d.parquet", [3, 3, 4])
    assert _histogram(_recipe(classes), source) == {3: 2, 4: 1}


def test_folder_labels_are_checked_too(tmp_path: Path) -> None:
    for name in ("0", "1"):
        (tmp_path / "f" / name).mkdir(parents=True)
        (tmp_path / "f" / name / "a.png").write_bytes(_png(int(name)))
    with pytest.raises(SourceError, match=r"label '0' is ambiguous"):
        _histogram(_recipe(SWAPPED), tmp_path / "f")
    assert _histogram(_recipe(SWAPPED, label_type="name"), tmp_path / "f") == {0: 1, 1: 1}


# -- the source root -------------------------------------------------------------------------


def _folder(root: Path) -> Path:
    for cls in ("zero", "one"):
        (root / cls).mkdir(parents=True)
        (root / cls / f"{cls}.png").write_bytes(_png(len(cls)))
    return root


def test_folder_class_linked_to_filesystem_root_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    (root / "two").symlink_to("/")
    with pytest.raises(SourceError, match=r"src/two: symbolic link to / leads out of"):
        list(FolderSource(root).records())


def test_folder_links_out_of_the_root_are_refused_by_name(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(9))
    for link, target in (("zero/stolen.png", outside / "secret.png"), ("one/sub", outside)):
        root = _folder(tmp_path / f"src-{link.replace('/', '-')}")
        (root / link).symlink_to(target)
        with pytest.raises(SourceError, match=rf"{link}: symbolic link to .*outside"):
            list(FolderSource(root).records())


def test_folder_links_inside_the_root_are_followed_once(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    (root / "one" / "again.png").symlink_to(root / "zero" / "zero.png")
    (root / "one" / "loop").symlink_to(root / "one")  # a cycle: walked once
    refs = [(r.reference, r.label) for r in FolderSource(root).records()]
    assert refs == [("one/again.png", "one"), ("one/one.png", "one"), ("zero/zero.png", "zero")]


def test_parquet_folder_link_out_is_refused(tmp_path: Path) -> None:
    elsewhere = _parquet(tmp_path / "elsewhere.parquet", [0])
    (tmp_path / "d").mkdir()
    _parquet(tmp_path / "d" / "a.parquet", [0])
    (tmp_path / "d" / "b.parquet").symlink_to(elsewhere)
    with pytest.raises(SourceError, match=r"b.parquet: symbolic link to .*elsewhere.parquet"):
        ParquetSource(tmp_path / "d", "label", "image")
    (tmp_path / "e" / "x.parquet").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"x.parquet: not a regular file"):
        ParquetSource(tmp_path / "e", "label", "image")


def _tar(path: Path, label: bytes = b"0") -> Path:
    with tarfile.open(path, "w") as tf:
        for ext, payload in (("png", _png(1)), ("cls", label)):
            info = tarfile.TarInfo(f"s0.{ext}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def test_webdataset_shard_linked_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = _tar(tmp_path / "elsewhere.tar")
    (tmp_path / "wds").mkdir()
    _tar(tmp_path / "wds" / "a-000.tar")
    (tmp_path / "wds" / "a-001.tar").symlink_to(elsewhere)
    with pytest.raises(SourceError, match=r"a-001.tar: symbolic link to .*elsewhere.tar"):
        WebDatasetSource(str(tmp_path / "wds" / "a-{000..001}.tar"))


def test_webdataset_names_are_never_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # webdataset reads `pipe:CMD` as a shell command; a shard file of that name is a file
    monkeypatch.chdir(tmp_path)
    _tar(tmp_path / "real.tar")
    name = "pipe:touch pwned && cat real.tar"
    _tar(tmp_path / name)
    records = list(WebDatasetSource(name).records())
    assert [r.label for r in records] == ["0"]
    assert records[0].reference == f"{tmp_path / name}#s0"
    assert not (tmp_path / "pwned").exists()
    assert os.path.isfile(tmp_path / name)


def test_a_webdataset_sample_with_two_images_is_read_from_the_same_member_as_before(
    tmp_path: Path,
) -> None:
    """jpg before webp (the order readers had before bmp and gif were read), so sources
    with both keep their images, and builds conditioned on them keep their identity."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from synthgen.generators.sources.open import open_source

    def encoded(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(buf, format=fmt)
        return buf.getvalue()

    jpg, webp = encoded("JPEG"), encoded("WEBP")
    path = tmp_path / "two.tar"
    with tarfile.open(path, "w") as tf:
        for ext, payload in (("webp", webp), ("jpg", jpg), ("cls", b"0")):
            info = tarfile.TarInfo(f"s0.{ext}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    (image,) = list(open_source(str(path)).iter_images())
    assert image.data == jpg
