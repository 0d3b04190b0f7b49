"""The invisible watermark: payload, round trip, survival, sizes, and the encoding step."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from synthgen.generators.handler import GenerationSettings, _encode
from synthgen.schemas.records import GenerationRequest, Sample
from synthgen.storage.images import decode_image, encode_image
from synthgen.storage.watermark import (
    MAGIC,
    can_carry,
    embed_watermark,
    judge_payload,
    read_watermark,
    read_watermark_image,
    skip_reason,
    watermark_payload,
)
from synthgen.validators.checks.watermark import WatermarkSurvives

HASH_A = "ab12cd34" + "0" * 56
HASH_B = "99887766" + "0" * 56


def picture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with some texture, like a generated image (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 255
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def settings(size: int, watermark: str | None, fmt: str = "png") -> GenerationSettings:
    return GenerationSettings(
        model_path="m",
        scheduler="native",
        steps=1,
        guidance_scale=1.0,
        height=size,
        width=size,
        dtype="float32",
        device="cpu",
        compute_batch=1,
        cpu_threads=1,
        image_format=fmt,
        png_compress_level=1,
        quality=95,
        watermark=watermark,
    )


REQUEST = GenerationRequest("k-000000", 0, 0, 0, "zero", "p", "", 1)


def test_payload_is_magic_and_recipe_hash_prefix() -> None:
    assert watermark_payload(HASH_A) == MAGIC + bytes.fromhex("ab12cd34")
    assert len(watermark_payload(HASH_A)) == 6


def test_round_trip_and_lossless_resave_survive() -> None:
    payload = watermark_payload(HASH_A)
    marked = embed_watermark(picture(256), payload)
    assert read_watermark(marked) == payload
    png = encode_image(marked, "png", 1)
    resaved = io.BytesIO()
    decode_image(png).save(resaved, format="PNG", compress_level=9)  # re-saved losslessly
    assert resaved.getvalue() != png
    assert read_watermark_image(Image.open(io.BytesIO(resaved.getvalue()))) == payload
    assert judge_payload(read_watermark(marked), [HASH_A]).ok
    other = judge_payload(read_watermark(marked), [HASH_B])
    assert not other.ok and other.reason == "watermark of another build"
    plain = judge_payload(read_watermark(picture(256, seed=3)), [HASH_A])
    assert not plain.ok


def test_embedding_is_deterministic() -> None:
    payload = watermark_payload(HASH_A)
    assert np.array_equal(
        embed_watermark(picture(256), payload), embed_watermark(picture(256), payload)
    )


def test_small_images_cannot_carry_it_and_say_why() -> None:
    assert not can_carry(16, 16) and can_carry(256, 256) and can_carry(512, 128)
    assert read_watermark(picture(16)) is None
    reason = skip_reason(16, 16)
    assert reason is not None and "16x16" in reason
    assert skip_reason(256, 256) is None
    with pytest.raises(ValueError, match="16x16"):
        embed_watermark(picture(16), watermark_payload(HASH_A))


def test_encode_step_watermarks_large_images_only() -> None:
    payload = watermark_payload(HASH_A)
    pixels = picture(256)
    sample = _encode(REQUEST, pixels, settings(256, payload.hex()))
    assert read_watermark_image(decode_image(sample.image)) == payload
    assert WatermarkSurvives(payload).reason(sample) is None
    unmarked = _encode(REQUEST, pixels, settings(256, None))
    assert WatermarkSurvives(payload).reason(unmarked) == "watermark"
    # a 16x16 image is encoded exactly as without a watermark (the digits' bytes never change)
    small = picture(16)
    assert _encode(REQUEST, small, settings(16, payload.hex())).image == encode_image(
        small, "png", 1
    )
    assert WatermarkSurvives(payload).reason(_encode(REQUEST, small, settings(16, None))) is None


def test_check_rejects_a_watermark_that_lossy_encoding_erased() -> None:
    payload = watermark_payload(HASH_A)
    marked = embed_watermark(picture(256), payload)
    data = encode_image(marked, "jpeg", quality=5)
    sample = Sample(REQUEST, data, "0" * 64, 256, 256)
    assert read_watermark_image(decode_image(data)) != payload
    assert WatermarkSurvives(payload).reason(sample) == "watermark"
