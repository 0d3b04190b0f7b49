"""Image-conditioned generation end to end on tiny real components.

img2img and inpaint run with the bundled digits model's own weights; ControlNet with a tiny
random-weight ControlNetModel built here to fit that model's UNet. Every build validates and
every conditioned sample regenerates byte for byte from its provenance and the source. Bad
conditioning input fails at resolve time, naming the problem, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import synthgen.generators.model_folder as model_folder
from synthgen.generators.conditioning import ConditioningError, pick_source
from synthgen.generators.handler import generate_batch
from synthgen.generators.planning import plan
from synthgen.generators.regenerate import Inputs, find_provenance, regenerate
from synthgen.pipelines.build import run_build
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.schemas.recipe import recipe_from_dict
from synthgen.storage.tars import iter_tar_samples
from synthgen.validators.corpus import validate_dir

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits-ldm"
DIGITS_CLIP = ROOT / "models" / "digits-clip"
NAMES = ("zero", "one")


def _png(seed: int, size: int = 16, mode: str = "RGB") -> bytes:
    """A blurry blob on black, like a digit: canny finds edges in it."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), dtype=np.float32)
    cx, cy = rng.integers(4, size - 4, 2)
    yy, xx = np.mgrid[:size, :size]
    img += 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i:03d}.png").write_bytes(_png(10 * c + i))
    return root


def _parquet(path: Path) -> Path:
    rows = [{"label": c, "image": _png(10 * c + i)} for c in range(2) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _webdataset(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "data-000.tar", "w") as tf:
        for c in range(2):
            for i in range(3):
                for ext, payload in (("png", _png(10 * c + i)), ("cls", str(c).encode())):
                    info = tarfile.TarInfo(f"s{c}{i}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return str(folder / "*.tar")


def _recipe(**extra: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "cond",
        "seed": 3,
        "model": {"path": str(DIGITS), "compute_batch": 2},
        "sampling": {
            "scheduler": "dpm-solver++",
            "steps": 2,
            "guidance_scale": 2.0,
            "height": 16,
            "width": 16,
        },
        "classes": [
            {"id": i, "name": n, "prompts": [f"a handwritten digit {i}"]}
            for i, n in enumerate(NAMES)
        ],
        "count_per_class": 2,
        "scoring": {
            "clip_model": str(DIGITS_CLIP),
            "batch_size": 4,
            "scorers": [{"name": "image_stats"}],
        },
        "checks": {"clip_score": None, "exact_duplicate": False},
        "output": {"shard_size": 4},
        "batch_size": 2,
    }
    recipe.update(extra)
    return recipe


def _tar_images(out: Path) -> dict[str, bytes]:
    return {
        s.key: s.members["png"]
        for tar in sorted(out.glob("*.tar"))
        for s in iter_tar_samples(tar, extensions={"png"})
    }


def _check_corpus(
    out: Path, mode: str, text_classes: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """The build validates, every row records its conditioning (none for `text_classes`),
    and the first sample of each class regenerates byte for byte."""
    report = validate_dir(out)
    assert report.ok, (report.failures, report.failed_expectations())
    shards = sorted(out.glob("[0-9]*.parquet"))
    rows = {r["key"]: r for f in shards for r in pq.read_table(f).to_pylist()}
    images = _tar_images(out)
    assert rows and set(images) == {k for k, r in rows.items() if r["status"] == "accepted"}
    for key, row in rows.items():
        want = None if row["class_name"] in text_classes else mode
        assert row["conditioning_mode"] == want
        params = json.loads(row["conditioning"]) if row["conditioning"] else None
        assert (params or {}).get("mode") == want
        if key not in images:
            continue
        sidecar = json.loads(_sidecar(out, key))
        assert sidecar["conditioning_mode"] == want
        assert sidecar["conditioning_source"] == row["conditioning_source"]
        assert sidecar["conditioning"] == params
    first: dict[str, str] = {}
    for key in sorted(images):
        first.setdefault(rows[key]["class_name"], key)
    for key in first.values():
        assert regenerate(find_provenance(out, key), Inputs.for_build(out)) == images[key]
    return rows


def _sidecar(out: Path, key: str) -> bytes:
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name == f"{key}.json":
                    f = tf.extractfile(m)
                    assert f is not None
                    return f.read()
    raise AssertionError(key)


def _same_bytes_whatever_the_batches(tmp_path: Path, cond: dict[str, Any], out: Path) -> None:
    """The build's images again, all requests in one call and one by one (other workers,
    other Beam batch sizes): the same bytes, the same provenance."""
    resolved = resolve(recipe_from_dict(_recipe(conditioning=cond)), tmp_path)
    settings = generation_settings(resolved)
    pipe = model_folder.load_pipeline(DIGITS, "dpm-solver++", "float32", "cpu", 1)
    requests = plan(resolved.recipe)
    whole = generate_batch(pipe, settings, requests)
    one_by_one = [s for r in reversed(requests) for s in generate_batch(pipe, settings, [r])]
    images = _tar_images(out)
    assert {s.request.key: s.image for s in whole} == images
    assert {s.request.key: s.image for s in one_by_one} == images
    assert {s.request for s in whole} == {s.request for s in one_by_one}


# -- end to end ----------------------------------------------------------------------------


def test_img2img_from_parquet_builds_validates_and_regenerates(
    tmp_path: Path, loads: list[str]
) -> None:
    source = _parquet(tmp_path / "src.parquet")
    cond = {"mode": "img2img", "strength": 0.5, "source": {"path": str(source)}}
    result = run_build(_recipe(conditioning=cond), tmp_path / "a", show_progress=False)
    rows = _check_corpus(result.output, "img2img")
    for row in rows.values():
        label = row["class_label"]
        ref = row["conditioning_source"]
        assert ref.startswith("src.parquet#row=")
        assert int(ref.split("=")[1]) // 3 == label  # its own class's images only
        data = pq.read_table(source).column("image")[int(ref.split("=")[1])].as_py()
        assert row["conditioning_source_sha256"] == hashlib.sha256(data).hexdigest()
        assert json.loads(row["conditioning"])["strength"] == 0.5
        # the pick is a pure function of (recipe seed, key)
        # the documented draw, computed here: sha256("synthgen-conditioning:<seed>:<key>")
        draw = hashlib.sha256(f"synthgen-conditioning:3:{row['key']}".encode()).digest()
        assert pick_source(3, row["key"], 3) == int.from_bytes(draw[:8], "little") % 3
        assert int(ref.split("=")[1]) == 3 * label + pick_source(3, row["key"], 3)
    assert len(loads) == 1  # one model load for the build
    _same_bytes_whatever_the_batches(tmp_path, cond, result.output)


def test_inpaint_from_webdataset_beside_a_text_only_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synthgen.generators.conditioning as conditioning

    calls: list[tuple[str | None, int]] = []
    real = conditioning.conditioned_call

    def counting(pipe: Any, family: str, requests: Any) -> Any:
        calls.append((requests[0].conditioning_mode, len(requests)))
        return real(pipe, family, requests)

    monkeypatch.setattr(conditioning, "conditioned_call", counting)
    pattern = _webdataset(tmp_path / "wds")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cond = {
        "mode": "inpaint",
        "strength": 1.0,
        "mask": str(tmp_path / "mask.png"),
        "source": {"path": pattern},
        "per_class": {"one": {"mode": "text"}},  # a text-only class in the same batches
    }
    result = run_build(_recipe(conditioning=cond), tmp_path / "out", show_progress=False)
    # one shard of 4 (two per class): its requests are grouped by conditioning before they
    # are cut into calls, so one full call per class (model.compute_batch 2), nothing padded
    assert sorted(calls, key=str) == [("inpaint", 2), (None, 2)]
    rows = _check_corpus(result.output, "inpaint", text_classes=("one",))
    for row in rows.values():
        if row["class_name"] == "one":
            assert row["conditioning_source"] is None
            continue
        assert re.fullmatch(
            rf"data-000\.tar#s{row['class_label']}[0-2]", row["conditioning_source"]
        )
        params = json.loads(row["conditioning"])
        assert params["mask"]["path"] == "mask.png"  # published by name


def _controlnet(
    folder: Path, cross_attention_dim: int = 32, channels: tuple[int, ...] = (32, 64)
) -> Path:
    """A tiny random-weight ControlNetModel fitting (or not) the digits UNet."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    net: Any = ControlNetModel(
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        conditioning_embedding_out_channels=(8, 16),
    )
    with torch.no_grad():  # random zero-convolutions too, so the net changes the image
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    net.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_controlnet_with_canny_and_a_fixed_image(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    net = _controlnet(tmp_path / "controlnet")
    fixed = tmp_path / "fixed.png"
    fixed.write_bytes(_png(99, size=24))  # another size: fitted by the resize policy
    cond = {
        "mode": "controlnet",
        "source": {"path": str(source)},
        "resize": "stretch",
        "controlnets": [
            {
                "path": str(net),
                "conditioning_scale": 0.8,
                "preprocessor": {"name": "canny", "low_threshold": 50, "high_threshold": 100},
            },
            {"path": str(net), "conditioning_scale": 0.5, "image": str(fixed)},
        ],
        "per_class": {"one": {"controlnets": [{"path": str(net), "conditioning_scale": 1.5}]}},
    }
    result = run_build(_recipe(conditioning=cond), tmp_path / "out", show_progress=False)
    rows = _check_corpus(result.output, "controlnet")
    for row in rows.values():
        params = json.loads(row["conditioning"])
        name = NAMES[row["class_label"]]
        assert row["conditioning_source"].startswith(f"{name}/")
        nets = params["controlnets"]
        if name == "zero":
            assert [n["conditioning_scale"] for n in nets] == [0.8, 0.5]
            assert nets[0]["preprocessor"] == {
                "name": "canny",
                "low_threshold": 50,
                "high_threshold": 100,
            }
            assert nets[1]["image"]["path"] == fixed.name  # published by name
        else:
            assert [n["conditioning_scale"] for n in nets] == [1.5]
            assert nets[0]["preprocessor"]["name"] == "identity"


def _ip_adapter(folder: Path, cross_attention_dim: int = 32) -> Path:
    """A tiny random IP-Adapter for the digits UNet: a CLIP image encoder (16x16 images,
    16-dim projection) and the adapter's image projection + per-layer key/value weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=16,
    )
    encoder: Any = CLIPVisionModelWithProjection(config)
    encoder.save_pretrained(str(folder / "image_encoder"), safe_serialization=True)
    from diffusers import UNet2DConditionModel

    unet: Any = UNet2DConditionModel.from_config(
        json.loads((DIGITS / "unet" / "config.json").read_text())
    )
    channels = unet.config.block_out_channels
    cross = cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cross, 16) * 0.05,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    # one key/value pair per cross-attention layer, in the UNet's processor order: 1, 3, 5, ...
    layers = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for i, name in enumerate(layers):
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else -1
        width = list(reversed(channels))[block] if name.startswith("up_") else channels[block]
        for kv in ("k", "v"):
            tensors[f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight"] = torch.randn(width, cross) * 0.05
    save_file(tensors, str(folder / "ip_adapter.safetensors"))
    return folder


def test_ip_adapter_with_the_source_image_as_image_prompt(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    adapter = _ip_adapter(tmp_path / "ip-adapter")
    cond = {
        "mode": "ip_adapter",
        "source": {"path": str(source)},
        "ip_adapter": {"path": str(adapter), "scale": 0.7},
    }
    result = run_build(_recipe(conditioning=cond), tmp_path / "out", show_progress=False)
    rows = _check_corpus(result.output, "ip_adapter")
    _same_bytes_whatever_the_batches(tmp_path, cond, result.output)
    for row in rows.values():
        params = json.loads(row["conditioning"])
        assert params["ip_adapter"]["scale"] == 0.7
        assert row["conditioning_source"].startswith(NAMES[row["class_label"]] + "/")


def test_ip_adapter_of_another_architecture_is_refused(tmp_path: Path, loads: list[str]) -> None:
    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    adapter = _ip_adapter(tmp_path / "ip-adapter", cross_attention_dim=16)
    cond = {
        "mode": "ip_adapter",
        "source": {"path": str(source)},
        "ip_adapter": {"path": str(adapter)},
    }
    _refused(tmp_path, loads, cond, "conditioning.ip_adapter", "cross-attention dim is 16")


def test_balance_img2img_tops_up_from_the_class_own_images(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 3, "one": 1})
    recipe = _recipe(
        balance={"source": str(source), "conditioning": "img2img", "strength": 0.5},
    )
    del recipe["count_per_class"]
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    rows = _check_corpus(result.output, "img2img")
    assert rows and all(r["class_name"] == "one" for r in rows.values())
    assert {r["conditioning_source"] for r in rows.values()} == {"one/000.png"}
    assert result.manifest.balance is not None
    assert result.manifest.balance.after == {"zero": 3, "one": 3}


def test_conditioning_is_in_the_recipe_hash_and_the_identity(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    base = _recipe()
    cond = _recipe(conditioning={"mode": "img2img", "source": {"path": str(source)}})
    stronger = _recipe(
        conditioning={"mode": "img2img", "strength": 0.3, "source": {"path": str(source)}}
    )
    hashes = {recipe_from_dict(r).hash for r in (base, cond, stronger)}
    assert len(hashes) == 3
    texts = _recipe(conditioning={"mode": "text"})
    assert recipe_from_dict(texts).hash != recipe_from_dict(base).hash  # the block is written
    before = resolve(recipe_from_dict(cond), tmp_path).identity()
    (source / "one" / "000.png").write_bytes(_png(77))
    after = resolve(recipe_from_dict(cond), tmp_path).identity()
    assert before["conditioning_sha256"] != after["conditioning_sha256"]
    assert before["model_sha256"] == after["model_sha256"]
    assert "conditioning_sha256" not in resolve(recipe_from_dict(base), tmp_path).identity()


# -- bad input: a named error before any model is loaded -------------------------------------


def _refused(tmp_path: Path, loads: list[str], cond: dict[str, Any], *needles: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConditioningError) as info:
        run_build(_recipe(conditioning=cond), out, show_progress=False)
    for needle in needles:
        assert needle in str(info.value)
    assert loads == []  # the model was never loaded, so never called
    assert not out.exists()


def test_missing_source_is_refused(tmp_path: Path, loads: list[str]) -> None:
    missing = tmp_path / "nowhere"
    cond = {"mode": "img2img", "source": {"path": str(missing)}}
    _refused(tmp_path, loads, cond, "conditioning.source", str(missing), "not found")


def test_unreadable_mask_is_refused(tmp_path: Path, loads: list[str]) -> None:
    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    mask = tmp_path / "mask.png"
    mask.write_bytes(b"not an image")
    cond = {"mode": "inpaint", "mask": str(mask), "source": {"path": str(source)}}
    _refused(tmp_path, loads, cond, "conditioning.mask", str(mask), "unreadable image")


def test_wrong_size_mask_is_refused(tmp_path: Path, loads: list[str]) -> None:
    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    mask = tmp_path / "mask.png"
    Image.new("L", (8, 8), 255).save(mask)
    cond = {"mode": "inpaint", "mask": str(mask), "source": {"path": str(source)}}
    _refused(tmp_path, loads, cond, "conditioning.mask", "8x8", "sampling size 16x16")


def test_image_the_preprocessor_cannot_read_is_refused(tmp_path: Path, loads: list[str]) -> None:
    net = _controlnet(tmp_path / "controlnet")
    broken = tmp_path / "edges.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cond = {
        "mode": "controlnet",
        "controlnets": [{"path": str(net), "image": str(broken)}],
    }
    _refused(tmp_path, loads, cond, str(broken), "unreadable image")


def test_controlnet_of_another_architecture_is_refused(tmp_path: Path, loads: list[str]) -> None:
    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    net = _controlnet(tmp_path / "controlnet", cross_attention_dim=16)
    cond = {
        "mode": "controlnet",
        "source": {"path": str(source)},
        "controlnets": [{"path": str(net), "preprocessor": {"name": "canny"}}],
    }
    _refused(tmp_path, loads, cond, "conditioning.controlnets.0", "cross_attention_dim is 16", "32")


def test_class_without_source_images_is_refused(tmp_path: Path, loads: list[str]) -> None:
    source = _folder(tmp_path / "src", {"zero": 1})
    cond = {"mode": "img2img", "source": {"path": str(source)}}
    _refused(tmp_path, loads, cond, "no image of class 'one'")


def test_strength_that_leaves_no_step_is_refused(tmp_path: Path, loads: list[str]) -> None:
    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    cond = {"mode": "img2img", "strength": 0.4, "source": {"path": str(source)}}
    _refused(tmp_path, loads, cond, "conditioning.strength", "0.4 of 2 steps")


def test_recipe_refuses_fields_of_another_mode() -> None:
    from synthgen.schemas.recipe import RecipeError

    with pytest.raises(RecipeError, match="mask: only for mode inpaint"):
        recipe_from_dict(
            _recipe(conditioning={"mode": "img2img", "mask": "m.png", "source": {"path": "s"}})
        )
    with pytest.raises(RecipeError, match=r"per_class\.one"):
        recipe_from_dict(
            _recipe(
                conditioning={
                    "mode": "img2img",
                    "source": {"path": "s"},
                    "per_class": {"one": {"strength": 2.0}},
                }
            )
        )
    with pytest.raises(RecipeError, match="every class or none"):
        recipe_from_dict(
            _recipe(
                conditioning={
                    "mode": "ip_adapter",
                    "source": {"path": "s"},
                    "ip_adapter": {"path": "a"},
                    "per_class": {"one": {"mode": "text"}},
                }
            )
        )
    with pytest.raises(RecipeError, match="not one of the classes"):
        recipe_from_dict(
            _recipe(conditioning={"mode": "text", "per_class": {"seven": {"mode": "text"}}})
        )


# -- balancing mixes, per-sample masks, per-class image prompts -------------------------------


def test_balance_mix_splits_top_ups_by_seed_and_key(tmp_path: Path) -> None:
    from synthgen.generators.conditioning import pick_mode

    source = _folder(tmp_path / "src", {"zero": 4, "one": 1})
    recipe = _recipe(
        balance={
            "source": str(source),
            "conditioning": {"text": 1, "img2img": 1},
            "strength": 0.5,
        },
    )
    del recipe["count_per_class"]
    result = run_build(recipe, tmp_path / "out", show_progress=False)
    assert validate_dir(result.output).ok
    rows = {
        r["key"]: r
        for f in result.output.glob("[0-9]*.parquet")
        for r in pq.read_table(f).to_pylist()
    }
    images = _tar_images(result.output)
    modes: dict[str | None, str] = {}
    for key, row in rows.items():
        # the split is a pure function of (recipe seed, key): half of the draws are text
        draw = hashlib.sha256(f"synthgen-conditioning-mix:3:{key}".encode()).digest()
        text = int.from_bytes(draw[:8], "little") / 2.0**64 < 0.5
        assert pick_mode(3, key, 0.5) == text
        assert row["conditioning_mode"] == (None if text else "img2img")
        assert (row["conditioning_source"] is None) == text
        if not text:
            assert row["conditioning_source"] == "one/000.png"
            assert json.loads(row["conditioning"])["strength"] == 0.5
        modes.setdefault(row["conditioning_mode"], key)
    assert set(modes) == {None, "img2img"}  # both kinds in one class's top-up
    for key in modes.values():
        if key in images:
            prov = find_provenance(result.output, key)
            assert regenerate(prov, Inputs.for_build(result.output)) == images[key]
    assert result.manifest.balance is not None
    assert result.manifest.balance.after == {"zero": 4, "one": 4}


def test_balance_mix_forms_and_refusals() -> None:
    from synthgen.schemas.recipe import RecipeError

    def balanced(conditioning: Any, **extra: Any) -> Any:
        data = _recipe(balance={"source": "s", "conditioning": conditioning, **extra})
        del data["count_per_class"]
        return recipe_from_dict(data)

    mapping = balanced({"text": 1, "img2img": 3})
    assert mapping.balance is not None
    assert mapping.balance.conditioning == {"img2img": 0.75, "text": 0.25}
    assert mapping.balance.uses_img2img
    # equal shares hash equal however they are written
    hashes = {
        balanced(c).hash
        for c in (["text", "img2img"], {"text": 1, "img2img": 1}, {"img2img": 0.5, "text": 0.5})
    }
    assert len(hashes) == 1
    one = balanced({"img2img": 2.0, "text": 0})
    assert one.balance is not None and one.balance.conditioning == "img2img"
    assert one.hash == balanced("img2img").hash
    with pytest.raises(RecipeError, match="lora applies to a whole class"):
        balanced({"text": 1, "lora": 1})
    with pytest.raises(RecipeError, match="mix weight"):
        balanced({"text": 1, "img2img": -1})
    with pytest.raises(RecipeError, match="listed twice"):
        balanced(["text", "text"])
    with pytest.raises(RecipeError, match="remove the `conditioning` block"):
        data = _recipe(
            balance={"source": "s", "conditioning": ["text", "img2img"]},
            conditioning={"mode": "text"},
        )
        del data["count_per_class"]
        recipe_from_dict(data)


def _mask_png(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def test_inpaint_with_per_sample_masks_from_a_mask_folder(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    masks = tmp_path / "masks"
    for name, value in (("zero", 0), ("one", 255)):  # zero: nothing repainted; one: all
        (masks / name).mkdir(parents=True)
        (masks / name / "000.png").write_bytes(_mask_png(value))
        Image.open(io.BytesIO(_mask_png(value))).save(masks / name / "001.bmp")  # any extension
    cond = {
        "mode": "inpaint",
        "strength": 1.0,
        "source": {"path": str(source), "mask_folder": str(masks)},
    }
    result = run_build(_recipe(conditioning=cond), tmp_path / "out", show_progress=False)
    rows = _check_corpus(result.output, "inpaint")
    images = _tar_images(result.output)
    far: dict[str, list[float]] = {"zero": [], "one": []}
    for key, row in rows.items():
        ref = row["conditioning_source"]
        mask = json.loads(row["conditioning"])["mask"]
        stem = ref.rsplit(".", 1)[0]
        assert mask["reference"] in (f"{stem}.png", f"{stem}.bmp")
        assert (
            mask["sha256"] == hashlib.sha256((masks / mask["reference"]).read_bytes()).hexdigest()
        )
        made = np.asarray(Image.open(io.BytesIO(images[key])).convert("L"), dtype=float)
        src = np.asarray(Image.open(source / ref).convert("L"), dtype=float)
        far[row["class_name"]].append(float(np.abs(made - src).mean()))
    # each sample was inpainted with its own image's mask: kept (black) vs repainted (white)
    assert max(far["zero"]) < min(far["one"])
    _same_bytes_whatever_the_batches(tmp_path, cond, result.output)


def test_per_sample_masks_from_parquet_and_webdataset_pair_with_their_images(
    tmp_path: Path,
) -> None:
    from synthgen.generators.conditioning import assign_sources
    from synthgen.generators.modes.base import MaskRef
    from synthgen.generators.modes.worker import read_mask

    rows = [
        {"label": c, "image": _png(10 * c + i), "mask": _mask_png(40 * c + i)}
        for c in range(2)
        for i in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "src.parquet")
    folder = tmp_path / "wds"
    folder.mkdir()
    with tarfile.open(folder / "data-000.tar", "w") as tf:
        for c in range(2):
            for i in range(3):
                members = (
                    ("png", _png(10 * c + i)),
                    ("mask.png", _mask_png(40 * c + i)),
                    ("cls", str(c).encode()),
                )
                for ext, payload in members:
                    info = tarfile.TarInfo(f"s{c}{i}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    for source in (
        {"path": str(tmp_path / "src.parquet"), "mask_column": "mask"},
        {"path": str(folder / "*.tar"), "mask_column": "mask.png"},
    ):
        cond = {"mode": "inpaint", "strength": 1.0, "source": source}
        resolved = resolve(recipe_from_dict(_recipe(conditioning=cond)), tmp_path)
        settings = generation_settings(resolved).conditioning
        assert settings is not None
        for r in assign_sources(settings, plan(resolved.recipe)):
            assert r.conditioning is not None and r.conditioning_source is not None
            params = settings.params_for(r)
            assert params is not None and params.source is not None
            mask = getattr(params, "mask", None)
            assert isinstance(mask, MaskRef)
            # the mask is the one stored beside the sample's own source image
            assert mask.reference == r.conditioning_source
            # and provenance records exactly these settings
            assert json.loads(r.conditioning) == params.record()
            ref = r.conditioning_source
            if "#row=" in ref:  # Parquet: row 3 * class + i
                c, i = divmod(int(ref.split("#row=")[1]), 3)
            else:  # WebDataset: shard.tar#s<class><i>
                c, i = int(ref[-2]), int(ref[-1])
            want = _mask_png(40 * c + i)
            assert c == r.class_label
            assert read_mask(params.source, mask.reference) == want
            assert mask.sha256 == hashlib.sha256(want).hexdigest()


def test_ip_adapter_image_prompt_and_scale_per_class(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    adapter = _ip_adapter(tmp_path / "ip-adapter")
    prompt = tmp_path / "one-style.png"
    prompt.write_bytes(_png(55, size=24))  # fitted like a source image
    cond = {
        "mode": "ip_adapter",
        "source": {"path": str(source)},
        "ip_adapter": {"path": str(adapter), "scale": 0.7},
        "per_class": {"one": {"ip_adapter": {"image": str(prompt), "scale": 0.3}}},
    }
    result = run_build(_recipe(conditioning=cond), tmp_path / "out", show_progress=False)
    rows = _check_corpus(result.output, "ip_adapter")
    _same_bytes_whatever_the_batches(tmp_path, cond, result.output)
    for row in rows.values():
        params = json.loads(row["conditioning"])["ip_adapter"]
        if row["class_name"] == "zero":
            assert params["scale"] == 0.7 and "image" not in params
            assert row["conditioning_source"].startswith("zero/")
        else:
            assert params["scale"] == 0.3
            assert row["conditioning_source"] is None
            assert params["image"] == {
                "path": prompt.name,  # an absolute path in the recipe: published by name
                "sha256": hashlib.sha256(prompt.read_bytes()).hexdigest(),
            }


def test_bad_masks_and_image_prompts_are_refused(tmp_path: Path, loads: list[str]) -> None:
    from synthgen.schemas.recipe import RecipeError

    source = _folder(tmp_path / "src", {"zero": 1, "one": 1})
    masks = tmp_path / "masks"
    (masks / "zero").mkdir(parents=True)
    (masks / "zero" / "000.png").write_bytes(_mask_png(255))
    cond = {"mode": "inpaint", "source": {"path": str(source), "mask_folder": str(masks)}}
    _refused(tmp_path, loads, cond, "conditioning.source", "no mask for one/000.png")
    (masks / "one").mkdir()
    (masks / "one" / "000.png").write_bytes(_mask_png(255, size=8))
    _refused(tmp_path, loads, cond, "the mask one/000.png is 8x8", "its image's size")
    parquet = _parquet(tmp_path / "src.parquet")
    cond = {"mode": "inpaint", "source": {"path": str(parquet), "mask_column": "mask"}}
    _refused(tmp_path, loads, cond, "no mask column 'mask'")
    with pytest.raises(RecipeError, match="not both"):
        recipe_from_dict(
            _recipe(
                conditioning={
                    "mode": "inpaint",
                    "mask": "m.png",
                    "source": {"path": "s", "mask_column": "mask"},
                }
            )
        )
    with pytest.raises(RecipeError, match="only for mode inpaint"):
        recipe_from_dict(
            _recipe(conditioning={"mode": "img2img", "source": {"path": "s", "mask_column": "m"}})
        )
    adapter = {"path": "a"}
    with pytest.raises(RecipeError, match="not its `path`"):
        recipe_from_dict(
            _recipe(
                conditioning={
                    "mode": "ip_adapter",
                    "source": {"path": "s"},
                    "ip_adapter": adapter,
                    "per_class": {"one": {"ip_adapter": {"path": "b"}}},
                }
            )
        )
    with pytest.raises(RecipeError, match="class 'zero' has no image prompt"):
        recipe_from_dict(
            _recipe(
                conditioning={
                    "mode": "ip_adapter",
                    "ip_adapter": adapter,
                    "per_class": {"one": {"ip_adapter": {"image": "one.png"}}},
                }
            )
        )
    assert loads == []


def test_an_image_with_several_controlnets_does_not_depend_on_its_neighbours(
    tmp_path: Path,
) -> None:
    from synthgen.generators.handler import generate_batch
    from synthgen.generators.model_folder import load_pipeline
    from synthgen.generators.planning import plan
    from synthgen.pipelines.resolve import generation_settings, resolve
    from synthgen.schemas.recipe import recipe_from_dict

    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    net = _controlnet(tmp_path / "controlnet")
    nets = [{"path": str(net), "conditioning_scale": s} for s in (0.8, 0.5)]
    cond = {"mode": "controlnet", "source": {"path": str(source)}, "controlnets": nets}
    recipe = recipe_from_dict(_recipe(conditioning=cond), "recipe")
    resolved = resolve(recipe, tmp_path)
    settings = generation_settings(resolved)
    pipe = load_pipeline(resolved.model_path, settings.scheduler, "float32", "cpu", 1)
    zeros = [r for r in plan(recipe) if r.class_name == "zero"]
    together = generate_batch(pipe, settings, zeros)  # one call of both
    alone = [generate_batch(pipe, settings, [r])[0] for r in zeros]  # each padded with itself
    assert [s.image_sha256 for s in together] == [s.image_sha256 for s in alone]


# -- the recorded settings -----------------------------------------------------------------

_SOURCE = (
    '"source":{"format":"folder","image_column":"image","label_column":"label",'
    '"location":"{tmp}/src"{masks}}'
)
_PINNED = {
    "inpaint": '{"height":16,"mask":{"reference":"zero/000.png","sha256":"{mask0}"},'
    '"mode":"inpaint","resize":"center_crop",' + _SOURCE + ',"strength":1.0,"width":16}',
    "controlnet": '{"controlnets":[{"conditioning_scale":1.0,"image":null,"path":"{tmp}/cn",'
    '"preprocessor":{"high_threshold":200,"low_threshold":100,"name":"canny"},"sha256":"{cn}"},'
    '{"conditioning_scale":0.5,"image":{"path":"{tmp}/p.png","sha256":"{p}"},"path":"{tmp}/cn",'
    '"preprocessor":{"high_threshold":200,"low_threshold":100,"name":"identity"},'
    '"sha256":"{cn}"}],"height":16,"mode":"controlnet","resize":"center_crop",'
    + _SOURCE
    + ',"width":16}',
    "ip_adapter": '{"height":16,"ip_adapter":{"image":{"path":"{tmp}/p.png","sha256":"{p}"},'
    '"path":"{tmp}/ip","scale":0.7,"sha256":"{ip}"},"mode":"ip_adapter",'
    '"resize":"center_crop","source":null,"width":16}',
}


def test_recorded_settings_are_pinned_and_read_back_as_params(tmp_path: Path) -> None:
    """What provenance stores for each mode, byte for byte (builds made before the modes
    were plug-ins regenerate and resume), and the params objects it reads back as."""
    import pickle

    from synthgen.generators.conditioning import assign_sources, resolve_conditioning
    from synthgen.generators.modes.base import MaskRef, params_from_record
    from synthgen.storage.hashing import folder_sha256

    _folder(tmp_path / "src", {"zero": 2, "one": 2})
    for c in NAMES:
        (tmp_path / "masks" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "masks" / c / f"{i:03d}.png").write_bytes(_mask_png(40 * i))
    (tmp_path / "p.png").write_bytes(_png(5))
    values = {
        "tmp": str(tmp_path),
        "cn": folder_sha256(_controlnet(tmp_path / "cn")),
        "ip": folder_sha256(_ip_adapter(tmp_path / "ip")),
        "p": hashlib.sha256(_png(5)).hexdigest(),
        "mask0": hashlib.sha256(_mask_png(0)).hexdigest(),
    }
    source = {"path": str(tmp_path / "src")}
    conds = {
        "inpaint": {
            "mode": "inpaint",
            "strength": 1.0,
            "source": {**source, "mask_folder": str(tmp_path / "masks")},
        },
        "controlnet": {
            "mode": "controlnet",
            "source": source,
            "controlnets": [
                {"path": "cn", "preprocessor": {"name": "canny"}},
                {"path": "cn", "image": "p.png", "conditioning_scale": 0.5},
            ],
        },
        "ip_adapter": {
            "mode": "ip_adapter",
            "ip_adapter": {"path": "ip", "scale": 0.7, "image": "p.png"},
        },
    }
    for mode, cond in conds.items():
        recipe = recipe_from_dict(_recipe(conditioning=cond))
        settings = resolve_conditioning(recipe, tmp_path, DIGITS, "StableDiffusionPipeline")
        assert settings is not None
        requests = assign_sources(settings, plan(recipe))
        first = next(r for r in requests if r.conditioning_source in (None, "zero/000.png"))
        masks = ',"mask_folder":"{tmp}/masks"' if mode == "inpaint" else ""
        want = _PINNED[mode].replace("{masks}", masks)
        for name, value in values.items():
            want = want.replace("{" + name + "}", value)
        assert first.conditioning == want
        params = settings.params_for(first)
        assert params is not None and json.loads(want) == params.record()
        assert params_from_record(json.loads(want)) == params  # regeneration reads it back
        assert pickle.loads(pickle.dumps(settings)) == settings  # travels as objects
        if mode == "inpaint":  # a per-sample mask is its own, and no part of the call's key
            assert getattr(params, "mask", None) == MaskRef("zero/000.png", values["mask0"])
            assert getattr(params.group_key(), "mask", "") is None


def test_what_a_worker_derives_and_reads_lives_on_its_loaded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each loaded model keeps its own derived pipeline and the source images it read: a
    second call on it reads nothing again, another model shares none of it."""
    import synthgen.generators.conditioning as conditioning
    from synthgen.generators.handler import DiffusersHandler
    from synthgen.generators.sources.folder_source import FolderSource

    reads: list[str] = []
    real_read = FolderSource.read

    def counting(self: FolderSource, reference: str, mask: str | None = None) -> bytes:
        reads.append(reference)
        return real_read(self, reference, mask)

    monkeypatch.setattr(FolderSource, "read", counting)
    source = _folder(tmp_path / "src", {"zero": 2, "one": 2})
    cond = {"mode": "img2img", "strength": 0.5, "source": {"path": str(source)}}
    resolved = resolve(recipe_from_dict(_recipe(conditioning=cond)), tmp_path)
    settings = generation_settings(resolved)
    handler = DiffusersHandler(settings, batch_size=2)
    first, second = handler.load_model(), handler.load_model()
    requests = plan(resolved.recipe)
    made = generate_batch(first, settings, requests)
    read_once = sorted(reads)
    assert read_once == sorted({s.request.conditioning_source or "" for s in made})
    assert [s.image for s in generate_batch(first, settings, requests)] == [s.image for s in made]
    assert sorted(reads) == read_once  # the same model read nothing again
    assert [s.image for s in generate_batch(second, settings, requests)] == [s.image for s in made]
    assert sorted(reads) == sorted(read_once * 2)  # the other model read its own
    assert not hasattr(conditioning, "_DERIVED") and not hasattr(conditioning, "_IMAGES")
