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


# The method is the library's, `imwatermark.maxDct.EmbedMaxDct` (what SDXL calls "dwtDct"),
# vectorised: the library loops in Python over every 4x4 block, 55-73 ms per 512x512 image
# on one core; the same float32 operations done on all blocks at once take a few ms and give
# the same pixels bit for bit (tests/storage/test_watermark.py compares both ways, and pixel
# for pixel, with the library). What the library does, and so what this does:
# - pixels in OpenCV's BGR order, as float32, to YUV with `cv2.cvtColor`;
# - of the channels only Y and U are considered (`SCALES[2]` is never used) and Y's scale is 0,
#   so only U carries the payload;
# - a one-level Haar DWT (pywt's `dwt2(..., "haar")`, here in numpy with pywt's float32 order
#   of operations) of the channel cropped to multiples of 4 rows and columns;
# - the approximation band in 4x4 blocks, numbered row by row; block `n` carries bit
#   `n % len(bits)` in its largest coefficient in magnitude but the first (no DCT is applied,
#   despite the method's name): |c| becomes (|c| // scale + 0.25 + 0.5 * bit) * scale, c's
#   sign kept; a reader votes 1 when |c| % scale > scale / 2 and takes a bit as 1 when the mean
#   vote times 255 exceeds 127;
# - the inverse DWT gets the horizontal and vertical details back swapped (the library's
#   quirk, kept: it is part of the pixels it produces), then YUV to BGR.
_HAAR = np.float32(0.7071067811865476)  # pywt's haar filter taps, as float32


def _bits(payload: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(payload, dtype=np.uint8))


def _yuv(pixels: np.ndarray) -> np.ndarray:
    """float32 YUV of uint8 RGB pixels, as the library computes it from float32 BGR."""
    import cv2

    if pixels.dtype == np.uint8:
        bgr = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR).astype(np.float32)
    else:
        bgr = np.ascontiguousarray(pixels[:, :, ::-1], dtype=np.float32)
    # in place: the same values as a new array, and faster (fewer fresh pages to touch)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV, dst=bgr)  # type: ignore[no-any-return]


def _crop(yuv: np.ndarray) -> tuple[slice, slice]:
    return slice(0, yuv.shape[0] // 4 * 4), slice(0, yuv.shape[1] // 4 * 4)  # the library's


def _channel(yuv: np.ndarray, channel: int) -> np.ndarray:
    """One channel, cropped as the library does, as a contiguous copy (faster to transform)."""
    rows, cols = _crop(yuv)
    return np.ascontiguousarray(yuv[rows, cols, channel])


def _haar(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """One level of the Haar DWT along `axis` (0: rows, 1: columns): (low, high)."""
    pairs = x.reshape(x.shape[0] // 2, 2, -1) if axis == 0 else x.reshape(x.shape[0], -1, 2)
    even = pairs[:, 0] if axis == 0 else pairs[:, :, 0]
    odd = pairs[:, 1] if axis == 0 else pairs[:, :, 1]
    even = even * _HAAR
    odd = odd * _HAAR
    return even + odd, even - odd


def _unhaar(low: np.ndarray, high: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of `_haar`, as pywt computes it."""
    low = low * _HAAR
    high = high * _HAAR
    if axis == 0:
        out = np.empty((low.shape[0], 2, low.shape[1]), dtype=np.float32)
        np.add(low, high, out=out[:, 0])
        np.subtract(low, high, out=out[:, 1])
    else:
        out = np.empty((low.shape[0], low.shape[1], 2), dtype=np.float32)
        np.add(low, high, out=out[:, :, 0])
        np.subtract(low, high, out=out[:, :, 1])
    return out.reshape(2 * low.shape[0], -1) if axis == 0 else out.reshape(low.shape[0], -1)


def _blocks(band: np.ndarray) -> np.ndarray:
    """Every whole BLOCK x BLOCK block of a band as one row of BLOCK * BLOCK values, in the
    library's order (block rows top to bottom, each left to right)."""
    rows, cols = band.shape[0] // BLOCK, band.shape[1] // BLOCK
    used = band[: rows * BLOCK, : cols * BLOCK]
    return used.reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2).reshape(rows * cols, -1)


def _max_coefficients(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each block's largest coefficient in magnitude but the first (the first one wins a
    tie, as in `np.argmax`), as (its index in the block, its value)."""
    pos = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    return pos, blocks[np.arange(len(blocks)), pos]


def _embed_yuv(yuv: np.ndarray, bits: np.ndarray) -> None:
    """`EmbedMaxDct(bits, len(bits), SCALES, BLOCK).encode`'s work on YUV, in place."""
    for channel in range(2):
        scale = SCALES[channel]
        if scale <= 0:
            continue
        low, high = _haar(_channel(yuv, channel), 0)
        approx, vertical = _haar(low, 1)  # pywt's cA and cV
        horizontal, diagonal = _haar(high, 1)  # cH and cD
        blocks = _blocks(approx)
        pos, val = _max_coefficients(blocks)
        bit = bits[np.arange(len(blocks)) % len(bits)].astype(np.float64)
        # the library's float32 floor division, then float64, stored back into float32
        # (exact: the results are integers)
        step = (np.abs(val) // scale + 0.25 + 0.5 * bit) * scale
        blocks[np.arange(len(blocks)), pos] = np.where(val >= 0.0, step, -step)
        rows, cols = approx.shape[0] // BLOCK, approx.shape[1] // BLOCK
        approx[: rows * BLOCK, : cols * BLOCK] = (
            blocks.reshape(rows, cols, BLOCK, BLOCK).swapaxes(1, 2).reshape(rows * BLOCK, -1)
        )
        # pywt.idwt2((cA, (cV, cH, cD))): cV and cH swapped, as the library does
        rows_, cols_ = _crop(yuv)
        yuv[rows_, cols_, channel] = _unhaar(
            _unhaar(approx, horizontal, 1), _unhaar(vertical, diagonal, 1), 0
        )


def _decode_yuv(yuv: np.ndarray, n_bits: int) -> np.ndarray:
    """`EmbedMaxDct(wmLen=n_bits, scales=SCALES, block=BLOCK).decode`'s bits from YUV (a bit
    with no block, which the library reads as NaN, is 0)."""
    ones = np.zeros(n_bits, dtype=np.float64)
    votes = np.zeros(n_bits, dtype=np.float64)
    for channel in range(2):
        scale = SCALES[channel]
        if scale <= 0:
            continue
        approx, _ = _haar(_haar(_channel(yuv, channel), 0)[0], 1)
        _, val = _max_coefficients(_blocks(approx))
        index = np.arange(len(val)) % n_bits
        ones += np.bincount(index, weights=np.abs(val) % scale > 0.5 * scale, minlength=n_bits)
        votes += np.bincount(index, minlength=n_bits)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = ones / votes
    return np.asarray(mean * 255 > 127, dtype=np.uint8)


def embed_watermark(pixels: np.ndarray, payload: bytes) -> np.ndarray:
    """Watermarked copy of uint8 RGB pixels (H, W, 3). Raises ValueError when too small.

    The library's own entry point works on uint8 and truncates its float result back into
    uint8 in the middle of the transform, which breaks the payload of most smooth images;
    here the same method runs on float32 pixels and is rounded once at the end.
    """
    import cv2

    height, width = pixels.shape[:2]
    if not can_carry(width, height):
        raise ValueError(TOO_SMALL.format(width=width, height=height))
    yuv = _yuv(pixels)
    _embed_yuv(yuv, _bits(payload))
    cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB, dst=yuv)  # the same values as YUV2BGR, reversed
    np.rint(yuv, out=yuv)
    np.clip(yuv, 0, 255, out=yuv)
    return yuv.astype(np.uint8)


def read_watermark(pixels: np.ndarray, length: int = PAYLOAD_BYTES) -> bytes | None:
    """The payload decoded from uint8 RGB pixels, or None when the image is too small."""
    height, width = pixels.shape[:2]
    if not can_carry(width, height):
        return None
    return np.packbits(_decode_yuv(_yuv(pixels), length * 8)).tobytes()


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


LOSSY_CLIPS = (
    "clips encoded as {fmt}, a lossy codec whose quantisation does not keep the payload: not "
    "watermarked (output.video_format: mp4-lossless carries it in every frame)"
)


def watermark_info(
    recipe_hash: str, width: int, height: int, lossy_clips: str | None = None
) -> dict[str, str | None]:
    """The manifest's `watermark` entry of a build: method, payload, and why it was skipped
    (images too small; `lossy_clips`: the lossy clip format a video build encodes to)."""
    skipped = skip_reason(width, height)
    if skipped is None and lossy_clips is not None:
        skipped = LOSSY_CLIPS.format(fmt=lossy_clips)
    return {"method": METHOD, "payload": watermark_payload(recipe_hash).hex(), "skipped": skipped}


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
