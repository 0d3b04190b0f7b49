"""Clips as the scorers and checks see them: which frames are scored, the clip's fingerprint,
and whether a recipe makes clips at all.

A clip is a uint8 numpy array (frames, height, width, 3). Scorers measure `scoring.frames`
of its frames, evenly spaced from the first to the last (`frame_indices`); the clip's
fingerprint is the perceptual hashes of `FINGERPRINT_FRAMES` such frames, concatenated
(16 hex digits each).
"""

from __future__ import annotations

from typing import Any

from synthgen.schemas.media import (
    VIDEO_FORMATS,
    MediaFormat,
    sampled_frames,
)
from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import Sample

DEFAULT_FRAMES = 4
"""Frames of a clip the scorers measure, when the recipe does not say (`scoring.frames`)."""

FINGERPRINT_FRAMES = 4
"""Frames hashed for a clip's fingerprint, whatever the number scored."""

HASH_HEX = 16
"""Hex digits of one frame's perceptual hash (64 bits) in a clip's fingerprint."""


def is_video(recipe: Recipe) -> bool:
    """Whether the recipe makes clips (`sampling.num_frames` is set)."""
    return recipe.sampling.num_frames is not None


def recipe_frames(recipe: Recipe) -> int:
    """The frames of each clip the scorers measure: `scoring.frames`, else `DEFAULT_FRAMES`."""
    frames = getattr(recipe.scoring, "frames", None)
    return DEFAULT_FRAMES if frames is None else int(frames)


def is_clip(pixels: Any) -> bool:
    """Whether decoded `pixels` are a clip (a 4-D array) rather than one image."""
    return getattr(pixels, "ndim", 0) == 4


def frame_indices(total: int, k: int) -> list[int]:
    """`k` frame indices of a clip of `total` frames, evenly spaced, the first and the last
    included (`schemas.media.sampled_frames`, as the codecs pick theirs)."""
    if total < 1 or k < 1:
        raise ValueError(f"a clip of {total} frames has no {k} frames to sample")
    return sampled_frames(total, k)


def frame_images(clip: Any, k: int) -> list[Any]:
    """The `frame_indices` frames of a uint8 (F, H, W, 3) clip, as RGB PIL images."""
    from PIL import Image

    if not is_clip(clip) or clip.shape[-1] != 3:
        raise ValueError(f"a clip is (frames, height, width, 3) pixels, not {clip.shape}")
    return [Image.fromarray(clip[i]) for i in frame_indices(clip.shape[0], k)]


def clip_fingerprint(clip: Any) -> str:
    """A clip's fingerprint: the perceptual hash (hex) of each of `FINGERPRINT_FRAMES` evenly
    spaced frames of uint8 (F, H, W, 3) pixels, concatenated in order (what the mp4 codecs'
    `fingerprint` gives)."""
    import imagehash

    return "".join(str(imagehash.phash(frame)) for frame in frame_images(clip, FINGERPRINT_FRAMES))


def decode_media(sample: Sample) -> Any:
    """A sample's stored media decoded for scorers and checks: an image as a PIL image, a
    clip (by its codec, found from its extension) as uint8 (F, H, W, 3) pixels."""
    if sample.media.is_image or not sample.media.extension:
        from synthgen.storage.images import decode_image

        return decode_image(sample.image)
    from synthgen.storage.codecs import codec_for_extension

    return codec_for_extension(sample.media.extension)().decode(sample.image)


def clip_format(recipe: Recipe) -> MediaFormat | None:
    """The format of a video build's clips (`output.video_format`); None for images."""
    if not is_video(recipe):
        return None
    return VIDEO_FORMATS.get(recipe.output.video_format)


def fingerprint_frames(fingerprint: str) -> int:
    """How many frame hashes a fingerprint holds (1 for an image's perceptual hash)."""
    return max(1, len(fingerprint) // HASH_HEX)
