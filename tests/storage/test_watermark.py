"""The invisible watermark: payload, round trip, survival, sizes, and the encoding step."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from imwatermark.maxDct import EmbedMaxDct
from PIL import Image

from synthgen.generators.handler import GenerationSettings, finish_image
from synthgen.schemas.media import image_media
from synthgen.schemas.records import GenerationRequest, Sample
from synthgen.storage.images import decode_image, encode_image
from synthgen.storage.watermark import (
    BLOCK,
    MAGIC,
    SCALES,
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


def scene(height: int, width: int, kind: str, seed: int = 0) -> np.ndarray:
    """Seeded uint8 RGB images of any size. The method holds on `smooth` gradients (the case
    the library's uint8 entry point breaks), `flat` grey and luminance `texture`; it loses
    the payload, in the library as here, on `busy` images (strong chroma noise: the largest
    coefficient of a block changes) and on `contrast` ones (many pixels clipped)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    if kind == "smooth":
        base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255
        base = base + rng.normal(0, 2, base.shape)
    elif kind == "texture":
        wave = 60 * np.sin(x / 7.0) * np.cos(y / 11.0)
        base = 128 + wave[..., None] + rng.normal(0, 4, (height, width, 3))
    elif kind == "flat":
        base = np.full((height, width, 3), 128.0)
    elif kind == "busy":
        base = 128 + 40 * np.sin(x / 7.0)[..., None] + rng.normal(0, 25, (height, width, 3))
    else:  # "contrast": about 30 % of the values clipped at 0 or 255
        base = rng.normal(128, 120, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def library(payload: bytes | None, length: int = 6) -> EmbedMaxDct:
    bits = list(np.unpackbits(np.frombuffer(payload, np.uint8))) if payload else []
    return EmbedMaxDct(bits, wmLen=8 * length, scales=list(SCALES), block=BLOCK)


def library_embed(pixels: np.ndarray, payload: bytes) -> np.ndarray:
    """What `embed_watermark` returned before it was vectorised: the library's method on
    float32 BGR pixels, rounded once."""
    bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)
    out = library(payload, len(payload)).encode(bgr)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)[:, :, ::-1])


def library_bits(pixels: np.ndarray, length: int = 6) -> np.ndarray:
    bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)
    return np.asarray(library(None, length).decode(bgr), dtype=np.uint8)


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
    assert watermark_payload(HASH_A) == bytes.fromhex("5347ab12cd34")  # "SG" + the hash prefix
    assert MAGIC == b"SG"
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


def _encode(request: Any, pixels: Any, s: GenerationSettings) -> Any:
    return finish_image(request, pixels, True, s)[0]


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
    sample = Sample(REQUEST, "0" * 64, image_media(data, "jpeg", 256, 256))
    assert read_watermark_image(decode_image(data)) != payload
    assert WatermarkSurvives(payload).reason(sample) == "watermark"


# The library (`imwatermark.maxDct.EmbedMaxDct`) stays the reference of the vectorised codec.
# Sizes (height, width): 512x512, 512x768 and 768x512, and 257x300 and 300x257, which the
# library crops to multiples of 4 and whose DWT bands leave a partial row or column of
# blocks out.
CASES = [
    (512, 512, "smooth"),
    (512, 512, "texture"),
    (512, 512, "busy"),
    (512, 768, "smooth"),
    (768, 512, "texture"),
    (257, 300, "smooth"),
    (257, 300, "contrast"),
    (300, 257, "flat"),
    (300, 257, "texture"),
]
HOLDS = {"smooth", "texture", "flat"}  # the kinds that keep the payload (see `scene`)


@pytest.mark.parametrize(("height", "width", "kind"), CASES)
def test_same_pixels_and_payload_as_the_library(height: int, width: int, kind: str) -> None:
    payload = watermark_payload(HASH_A)
    pixels = scene(height, width, kind, seed=height + width)
    ours, theirs = embed_watermark(pixels, payload), library_embed(pixels, payload)
    assert ours.dtype == np.uint8 and ours.shape == pixels.shape
    assert np.array_equal(ours, theirs)  # bit for bit, every pixel
    # each decoder reads the other's embedding, and both read the same bits
    found = np.packbits(library_bits(ours)).tobytes()
    assert read_watermark(theirs) == found
    assert (found == payload) == (kind in HOLDS)


def test_same_bits_as_the_library_where_votes_are_close() -> None:
    """Unmarked and lossy-encoded images, where a bit's votes are near a tie, and a length
    that divides no block count evenly: the decision rule is the library's, bit for bit."""
    payload = watermark_payload(HASH_B)
    marked = embed_watermark(scene(512, 512, "smooth", seed=5), payload)
    lossy = np.asarray(decode_image(encode_image(marked, "jpeg", quality=60)))
    for image in (scene(300, 257, "busy", seed=9), lossy, scene(512, 512, "smooth")):
        for length in (6, 7, 13):
            bits = library_bits(image, length)
            assert read_watermark(image, length) == np.packbits(bits).tobytes()
