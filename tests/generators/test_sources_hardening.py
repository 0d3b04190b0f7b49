"""Sources, hardening round 3 (issue 31): one reader per format (item 9), and input images
capped relative to the recipe's size before they are decoded (item 14)."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from synthgen.generators.conditioning import ConditioningError, resolve_conditioning
from synthgen.generators.modes.worker import open_described, read_mask
from synthgen.generators.sources.base import MIN_LIMIT_PIXELS, PixelLimit, SourceError
from synthgen.generators.sources.open import SourceOptions, open_source, read_histogram
from synthgen.generators.sources.webdataset_source import WebDatasetSource
from synthgen.schemas.recipe import Recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits-ldm"
PIPELINE = "StableDiffusionPipeline"
NAMES = ("zero", "one")


def _png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _mask(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, "PNG")
    return buf.getvalue()


def _recipe(**extra: Any) -> Recipe:
    data: dict[str, Any] = {
        "name": "sources",
        "model": {"path": str(DIGITS)},
        "sampling": {"steps": 2, "height": 16, "width": 16},
        "classes": [{"id": i, "name": n, "prompts": [f"a digit {i}"]} for i, n in enumerate(NAMES)],
        "scoring": {"clip_model": "c"},
        **extra,
    }
    if "balance" not in extra:
        data["count_per_class"] = 2
    return recipe_from_dict(data)


# -- item 9: WebDataset members under a folder with a dot, or under `./` -------------------

# (member prefix of each sample) in tar order: the layouts that lost images
LAYOUTS = {
    "dotted-folder": ["v1.0/"] * 15,
    "dot-slash": ["./"] * 6,  # what `tar cf x.tar ./*` writes
    "mixed": [""] * 3 + ["v1.0/"] * 12,  # 12 of these 15 were lost
}


def _shard(folder: Path, prefixes: list[str]) -> tuple[str, dict[str, tuple[int, bytes, bytes]]]:
    """A shard of samples `<prefix>s<n>` (class n % 2) with .png, .mask.png and .cls members;
    returns its path and key -> (class id, image, mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[int, bytes, bytes]] = {}
    path = folder / "data-000.tar"
    with tarfile.open(path, "w") as tf:
        for n, prefix in enumerate(prefixes):
            key = f"{prefix}s{n:02d}"
            c = n % 2
            written[key] = (c, _png(n), _mask(10 * n))
            members = (("png", _png(n)), ("mask.png", _mask(10 * n)), ("cls", str(c).encode()))
            for ext, payload in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return str(path), written


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_webdataset_source_reads_labels_and_images_with_webdatasets_keys(
    tmp_path: Path, layout: str
) -> None:
    import webdataset as wds

    url, written = _shard(tmp_path / "wds", LAYOUTS[layout])
    src = WebDatasetSource(url)
    # the keys are the ones every WebDataset reader sees
    theirs = [s["__key__"] for s in wds.WebDataset([url], shardshuffle=False, empty_check=False)]
    assert theirs == list(written)
    got = list(src.iter_images("mask.png"))
    assert [g.reference for g in got] == [f"{url}#{k}" for k in written]
    for g, (c, image, mask) in zip(got, written.values(), strict=True):
        assert (g.label, g.data, g.mask) == (str(c), image, mask)
        assert src.read(g.reference) == image
        assert src.read(g.reference, "mask.png") == mask
    assert [r.reference for r in src.records()] == [g.reference for g in got]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_conditioning_source_keeps_every_image_and_mask(tmp_path: Path, layout: str) -> None:
    url, written = _shard(tmp_path / "wds", LAYOUTS[layout])
    cond = {"mode": "inpaint", "strength": 1.0, "source": {"path": url, "mask_column": "mask.png"}}
    settings = resolve_conditioning(_recipe(conditioning=cond), tmp_path, DIGITS, PIPELINE)
    assert settings is not None
    pooled: dict[str, str] = {}
    for class_id, cc in settings.classes:
        want = {f"{url}#{k}" for k, (c, _, _) in written.items() if c == class_id}
        assert {ref for ref, _ in cc.pool} == want  # no image lost, none from another class
        pooled.update(cc.pool)
        assert [m[0] for m in cc.masks] == [ref for ref, _ in cc.pool]
    # what a worker reads back by reference is the image (and mask) that was hashed
    source = settings.classes[0][1].params.source
    assert source is not None and source.format == "webdataset"
    for key, (_, image, mask) in written.items():
        ref = f"{url}#{key}"
        assert pooled[ref] == hashlib.sha256(image).hexdigest()
        assert open_described(source).read(ref) == image
        assert read_mask(source, ref) == mask


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_balance_source_keeps_every_image(tmp_path: Path, layout: str) -> None:
    url, written = _shard(tmp_path / "wds", LAYOUTS[layout])
    recipe = _recipe(balance={"source": url, "conditioning": "img2img", "strength": 0.5})
    assert recipe.balance is not None
    per_class = {c: sum(1 for v in written.values() if v[0] == c) for c in (0, 1)}
    src = open_source(url, SourceOptions.of(recipe.balance))
    assert read_histogram(src, recipe) == per_class
    # reference sets and LoRA adaptation read the same images by the same keys
    assert [(i.reference, i.data) for i in src.iter_images()] == [
        (f"{url}#{k}", v[1]) for k, v in written.items()
    ]
    # and img2img top-ups start from every one of them
    settings = resolve_conditioning(recipe, tmp_path, DIGITS, PIPELINE)
    assert settings is not None
    assert {cid: len(cc.pool) for cid, cc in settings.classes} == per_class


def test_webdataset_sample_split_apart_is_refused(tmp_path: Path) -> None:
    """A key whose members are not next to each other would name two images."""
    path = tmp_path / "split.tar"
    with tarfile.open(path, "w") as tf:
        for name, payload in (
            ("a.png", _png(0)),
            ("a.cls", b"0"),
            ("b.png", _png(1)),
            ("b.cls", b"0"),
            ("a.png", _png(2)),  # another image under the same reference
            ("a.cls", b"1"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(SourceError, match=r"sample 'a' appears twice"):
        list(WebDatasetSource(str(path)).records())


# -- item 14: image bombs under Pillow's limit ----------------------------------------------

BOMB = (4200, 4200)  # 17.6 megapixels in about 17 KB: over the 16x16 recipe's limit


def _png_bomb(width: int = BOMB[0], height: int = BOMB[1]) -> bytes:
    """A valid all-black greyscale PNG of `width` x `height`, a few kilobytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes (opening reads the header only)."""
    sizes: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(self: Any) -> Any:
        sizes.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def _folder(root: Path, bomb: str | None = None) -> Path:
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (root / name / f"{i}.png").write_bytes(_png(10 * c + i))
    if bomb is not None:
        (root / bomb).write_bytes(_png_bomb())
    return root


def test_pixel_limit_is_relative_to_the_recipe_size() -> None:
    assert PixelLimit(16, 16).pixels == MIN_LIMIT_PIXELS == 4096 * 4096
    assert PixelLimit(2048, 2048).pixels == 16 * 2048 * 2048
    assert len(_png_bomb()) < 40_000 and BOMB[0] * BOMB[1] > PixelLimit(16, 16).pixels


def _refused(recipe: Recipe, base: Path, decoded: list[tuple[int, int]], *needles: str) -> None:
    with pytest.raises(ConditioningError) as info:
        resolve_conditioning(recipe, base, DIGITS, PIPELINE)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert BOMB not in decoded  # refused from its header: never decoded


def test_bomb_in_a_conditioning_source_is_refused_undecoded(
    tmp_path: Path, decoded: list[tuple[int, int]]
) -> None:
    source = _folder(tmp_path / "src", bomb="one/bomb.png")
    cond = {"mode": "img2img", "source": {"path": str(source)}}
    limit = str(MIN_LIMIT_PIXELS)
    _refused(_recipe(conditioning=cond), tmp_path, decoded, "one/bomb.png", "4200x4200", limit)


def test_bomb_in_a_balance_source_is_refused_undecoded(
    tmp_path: Path, decoded: list[tuple[int, int]]
) -> None:
    source = _folder(tmp_path / "src", bomb="zero/bomb.png")
    recipe = _recipe(balance={"source": str(source), "conditioning": "img2img"})
    _refused(recipe, tmp_path, decoded, "zero/bomb.png", str(MIN_LIMIT_PIXELS))
    assert recipe.balance is not None
    limited = open_source(str(source), SourceOptions.of(recipe.balance), PixelLimit(16, 16))
    with pytest.raises(SourceError, match=r"bomb\.png: 4200x4200 is more pixels"):
        read_histogram(limited, recipe)
    assert BOMB not in decoded


def test_bomb_masks_are_refused_undecoded(tmp_path: Path, decoded: list[tuple[int, int]]) -> None:
    source = _folder(tmp_path / "src")
    # the recipe's one mask
    (tmp_path / "mask.png").write_bytes(_png_bomb())
    cond: dict[str, Any] = {"mode": "inpaint", "mask": "mask.png", "source": {"path": "src"}}
    _refused(_recipe(conditioning=cond), tmp_path, decoded, "mask.png is 4200x4200", "16x16")
    # per-sample masks: a mask folder, a Parquet mask column
    masks = tmp_path / "masks"
    for name in NAMES:
        (masks / name).mkdir(parents=True)
        for i in range(2):
            (masks / name / f"{i}.png").write_bytes(_mask(255))
    (masks / "one" / "1.png").write_bytes(_png_bomb())
    cond = {"mode": "inpaint", "source": {"path": str(source), "mask_folder": str(masks)}}
    _refused(_recipe(conditioning=cond), tmp_path, decoded, "one/1.png", "4200x4200")
    rows = [
        {"label": c, "image": _png(c), "mask": _png_bomb() if c else _mask(0)} for c in range(2)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "src.parquet")
    cond = {"mode": "inpaint", "source": {"path": "src.parquet", "mask_column": "mask"}}
    _refused(_recipe(conditioning=cond), tmp_path, decoded, "row 1 mask", str(MIN_LIMIT_PIXELS))


def test_bomb_image_prompts_and_control_images_are_refused_undecoded(
    tmp_path: Path, decoded: list[tuple[int, int]]
) -> None:
    from tests.generators.test_conditioning import _controlnet, _ip_adapter

    (tmp_path / "bomb.png").write_bytes(_png_bomb())
    adapter = _ip_adapter(tmp_path / "ip-adapter")
    cond: dict[str, Any] = {
        "mode": "ip_adapter",
        "ip_adapter": {"path": str(adapter), "image": "bomb.png"},
    }
    limit = str(MIN_LIMIT_PIXELS)
    _refused(_recipe(conditioning=cond), tmp_path, decoded, "bomb.png: 4200x4200", limit)
    net = _controlnet(tmp_path / "controlnet")
    cond = {"mode": "controlnet", "controlnets": [{"path": str(net), "image": "bomb.png"}]}
    _refused(_recipe(conditioning=cond), tmp_path, decoded, "bomb.png: 4200x4200", limit)


def test_tar_member_declaring_more_than_an_image_can_need_is_not_read(tmp_path: Path) -> None:
    """A member's header can declare gigabytes a few kilobytes on disk hold (sparse, or cut
    off): with a limit, it is refused from its header, before any byte is read."""
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tf:
        for name, payload in (("a.png", _png(0)), ("a.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    data = bytearray(path.read_bytes())
    header = tarfile.TarInfo("b.png")
    header.size = PixelLimit(16, 16).member_bytes + 1
    end = data.rindex(b"a.cls") + 1024  # after a.cls's header and its one block of data
    data[end:end] = header.tobuf(format=tarfile.GNU_FORMAT)
    path.write_bytes(bytes(data))
    src = WebDatasetSource(str(path))
    src.limit = PixelLimit(16, 16)
    with pytest.raises(SourceError, match=r"member b\.png declares \d+ bytes.*not read"):
        list(src.records())


def _digits_build(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A 16x16 build of the default models over two classes."""
    return {
        "name": "bombs",
        "model": {"path": str(DIGITS), "compute_batch": 2},
        "sampling": {"steps": 2, "height": 16, "width": 16, "guidance_scale": 1.0},
        "classes": [{"id": i, "name": n, "prompts": [f"a digit {i}"]} for i, n in enumerate(NAMES)],
        "scoring": {"clip_model": str(ROOT / "models" / "digits-clip")},
        "batch_size": 2,
        **extra,
    }


def test_bomb_in_a_balancing_builds_source_is_refused_undecoded_before_generation(
    tmp_path: Path, decoded: list[tuple[int, int]]
) -> None:
    from synthgen.pipelines.build import run_build

    source = _folder(tmp_path / "src", bomb="one/bomb.png")
    data = _digits_build(tmp_path, balance={"source": str(source), "target": 3})
    with pytest.raises(SourceError, match=r"bomb\.png: 4200x4200 is more pixels"):
        run_build(data, tmp_path / "out", show_progress=False)
    assert BOMB not in decoded
    assert not list((tmp_path / "out").glob("*.tar")), "refused before any shard"


def test_bomb_in_a_reference_set_is_refused_undecoded_before_generation(
    tmp_path: Path, decoded: list[tuple[int, int]]
) -> None:
    from synthgen.pipelines.build import run_build

    source = _folder(tmp_path / "ref", bomb="zero/bomb.png")
    data = _digits_build(tmp_path, count_per_class=2, reference={"source": str(source)})
    data["scoring"]["scorers"] = [{"name": "clip"}, {"name": "clip_embedding"}]
    with pytest.raises(Exception, match=r"bomb\.png: 4200x4200 is more pixels"):
        run_build(data, tmp_path / "out", show_progress=False)
    assert BOMB not in decoded
    assert not list((tmp_path / "out").glob("*.tar")), "refused before any shard"
