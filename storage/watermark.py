"""The invisible watermark every large-enough image carries: DWT-DCT, as Stable Diffusion XL.

Payload (48 bits): the 2-byte magic `SG` followed by the first 4 bytes of the build's recipe
hash (sha256 hex `ab12cd34...` -> bytes `ab 12 cd 34`). It says "made by synthgen" and which
recipe made it; the manifest and provenance say the rest. The method needs at least
256 x 256 pixels (by area): smaller images are not watermarked, and the build's manifest says
so once (`watermark.skipped`).

Embedding works on uint8 RGB pixels before encoding; decoding works on any decoded image, so
an image re-saved losslessly still carries it. The codec is deterministic: the same pixels
and payload always give the same watermarked pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "dwtDct"
MAGIC = b"SG"
HASH_BYTES = 4
PAYLOAD_BYTES = len(MAGIC) + HASH_BYTES
MIN_PIXELS = 256 * 256  # the library's own lower bound
SCALES = (0, 36, 36)  # the library's defaults: the U chroma channel, quantisation step 36
BLOCK = 4
TOO_SMALL = (
    f"images of {{width}}x{{height}} pixels are smaller than the {METHOD} watermark needs "
    f"({MIN_PIXELS} pixels, e.g. 256x256): not watermarked"
)


def watermark_payload(recipe_hash: str) -> bytes:
    """The payload of a build: magic + the first bytes of its recipe hash."""
    return MAGIC + bytes.fromhex(recipe_hash[: 2 * HASH_BYTES])


def can_carry(width: int, height: int) -> bool:
    """Whether an image of this size can carry the watermark."""
    return width * height >= MIN_PIXELS


def skip_reason(width: int, height: int) -> str | None:
    """Why images of this size carry no watermark, or None when they do."""
    return None if can_carry(width, height) else TOO_SMALL.format(width=width, height=height)


def _codec(payload: bytes | None, length: int) -> Any:
    from imwatermark.maxDct import EmbedMaxDct

    bits = list(np.unpackbits(np.frombuffer(payload, dtype=np.uint8))) if payload else []
    return EmbedMaxDct(bits, wmLen=length * 8, scales=list(SCALES), block=BLOCK)


def embed_watermark(pixels: np.ndarray, payload: bytes) -> np.ndarray:
    """Watermarked copy of uint8 RGB pixels (H, W, 3). Raises ValueError when too small.

    The library's own entry point works on uint8 and truncates its float result back into
    uint8 in the middle of the transform, which breaks the payload of most smooth images;
    here the same method runs on float32 pixels and is rounded once at the end.
    """
    height, width = pixels.shape[:2]
    if not can_carry(width, height):
        raise ValueError(TOO_SMALL.format(width=width, height=height))
    bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)  # OpenCV's BGR order
    out = _codec(payload, len(payload)).encode(bgr)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)[:, :, ::-1])


def read_watermark(pixels: np.ndarray, length: int = PAYLOAD_BYTES) -> bytes | None:
    """The payload decoded from uint8 RGB pixels, or None when the image is too small."""
    height, width = pixels.shape[:2]
    if not can_carry(width, height):
        return None
    bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)
    bits = np.asarray(_codec(None, length).decode(bgr), dtype=np.uint8)
    return np.packbits(bits).tobytes()


def read_watermark_image(image: Any) -> bytes | None:
    """`read_watermark` of a decoded PIL image (converted to RGB)."""
    return read_watermark(np.asarray(image.convert("RGB")))


@dataclass(frozen=True)
class WatermarkVerdict:
    """What a decoded payload says about a build: `ok`, or why not."""

    ok: bool
    found: str | None  # hex of the decoded payload
    reason: str | None


def judge_payload(found: bytes | None, recipe_hashes: list[str]) -> WatermarkVerdict:
    """Whether `found` is the payload of one of `recipe_hashes` (a build and its lineage)."""
    if found is None:
        return WatermarkVerdict(False, None, "image too small to carry a watermark")
    expected = {watermark_payload(h) for h in recipe_hashes}
    if found in expected:
        return WatermarkVerdict(True, found.hex(), None)
    if not found.startswith(MAGIC):
        return WatermarkVerdict(False, found.hex(), "no synthgen watermark")
    return WatermarkVerdict(False, found.hex(), "watermark of another build")


def watermark_info(recipe_hash: str, width: int, height: int) -> dict[str, str | None]:
    """The manifest's `watermark` entry of a build: method, payload, and why it was skipped."""
    return {
        "method": METHOD,
        "payload": watermark_payload(recipe_hash).hex(),
        "skipped": skip_reason(width, height),
    }


def survives_encoding(fmt: str, quality: int, width: int, height: int) -> bool:
    """Whether the watermark of a `width`x`height` image survives encoding as `fmt` at
    `quality` (probed on a smooth test image with mild noise, seeded)."""
    from synthgen.storage.images import decode_image, encode_image

    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.linspace(0, 127, height), np.linspace(0, 127, width))
    pixels = np.stack([ramp] * 3, -1) + rng.normal(0, 12, (height, width, 3))
    payload = watermark_payload("0" * 64)
    marked = embed_watermark(pixels.clip(0, 255).astype(np.uint8), payload)
    data = encode_image(marked, fmt, quality=quality)
    return read_watermark_image(decode_image(data)) == payload
