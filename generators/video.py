"""Clips from text-to-video pipelines: the call's frames on the host, and a clip's host work.

A video family's call (`generators.families`, `Family.video`) returns `.frames`, a tensor
(N, F, C, H, W) in [0, 1] on the model's device; `to_frames` quantises it there exactly as
`handler.to_pixels` quantises images (clip to [0, 1], times 255 in float32, round half to
even) and brings (N, F, H, W, C) uint8 to the host. `finish_clip` is a clip's host work:
watermark each frame (lossless codecs only: a lossy encoder does not keep the payload),
encode with the recipe's clip codec (`storage.codecs.video_codec`: `mp4`, `mp4-lossless`) at
the recipe's frame rate, fingerprint what is stored, hash.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from synthgen.schemas.media import Shape
from synthgen.schemas.records import GenerationRequest, Sample

if TYPE_CHECKING:
    from synthgen.generators.handler import CallOutput, GenerationSettings
    from synthgen.storage.codecs.base import VideoCodec

__all__ = ["clip_codec", "clip_watermarked", "finish_clip", "to_frames"]


def to_frames(frames: Any) -> CallOutput:
    """A video call's frames (N, F, C, H, W) in [0, 1] -> finite flags (one per clip) and
    uint8 (N, F, H, W, C) on the host, quantised on the frames' device."""
    import torch

    from synthgen.generators.handler import CallOutput

    if frames.dim() != 5:
        raise ValueError(f"video frames must be (N, F, C, H, W); got shape {tuple(frames.shape)}")
    with torch.inference_mode():
        x = frames.float()
        finite = torch.isfinite(x.flatten(1).sum(dim=1)).tolist()
        pixels = x.mul(255).clamp_(0.0, 255.0).round_().to(torch.uint8).permute(0, 1, 3, 4, 2)
    return CallOutput(pixels.cpu().numpy(), [bool(f) for f in finite])


def clip_codec(settings: GenerationSettings) -> VideoCodec:
    """The settings' clip codec (`output.video_format`) encoding at their frame rate."""
    from synthgen.storage.codecs import video_codec

    return video_codec(settings.video_format, settings.fps)


def clip_watermarked(settings: GenerationSettings, height: int, width: int) -> bool:
    """Whether a clip's frames carry the invisible watermark: a payload to embed, a lossless
    codec (H.264's lossy quantisation does not keep it) and frames large enough."""
    from synthgen.storage.watermark import can_carry

    if settings.watermark is None or not clip_codec(settings).lossless:
        return False
    return can_carry(width, height)


def finish_clip(
    request: GenerationRequest, frames: Any, finite: bool, settings: GenerationSettings
) -> tuple[Sample, Any]:
    """A generated clip's host work: watermark each frame (see `clip_watermarked`), encode at
    the recipe's frame rate, fingerprint and hash; returns the Sample and the frames it
    stores (F, H, W, C) uint8 (a lossy clip decoded once: what readers get). A clip with
    non-finite values raises FloatingPointError, which makes it a `failed` sample."""
    import numpy as np

    from synthgen.storage.watermark import embed_watermark

    if not finite:
        raise FloatingPointError("non-finite pixel values in the decoded clip")
    f, h, w = (int(n) for n in frames.shape[:3])
    if clip_watermarked(settings, h, w):
        assert settings.watermark is not None
        payload = bytes.fromhex(settings.watermark)
        frames = np.stack([embed_watermark(frame, payload) for frame in frames])
    codec = clip_codec(settings)
    data = codec.encode(frames)  # at the codec's frame rate: the settings' fps
    stored = frames if codec.lossless else np.asarray(codec.decode(data))
    sample = Sample(
        request=request,
        image_sha256=hashlib.sha256(data).hexdigest(),
        media=codec.media(data, Shape(f, h, w), codec.fingerprint(stored)),
    )
    return sample, stored
