"""MP4 clips: H.264 through PyAV's libx264, lossy 4:2:0 (`mp4`) or lossless RGB (`mp4-lossless`).

The bytes are a function of the frames, the frame rate and the library versions only:
- the encoder runs on one thread (`threads=1`, no sliced or lookahead threads), with a fixed
  preset, a fixed quality (crf; qp 0 for lossless), a fixed GOP (a key frame every `gop`
  frames, no scene-cut key frames) and no B-frames, so decode order is display order;
- timestamps are the frame index in a time base of 1/fps (the clock is never read);
- the muxer runs bit-exact (`fflags=+bitexact`: no `encoder` tag naming the libavformat
  version, zero creation and modification times), and the SEI message in which x264 writes
  its version and options is removed from the stream (`filter_units=remove_types=6`); which
  encoder made the bytes is in provenance instead (`identity`);
- RGB to 4:2:0 YUV (BT.601, limited range, each chroma sample the rounded mean of its 2x2
  pixels) is integer arithmetic in numpy, not swscale, whose SIMD paths may round otherwise
  from one CPU to another. Decoding converts back the same way (chroma repeated over its
  2x2 pixels); H.264 decoding itself is bit-exact by the standard.

`encode` takes uint8 (F, H, W, 3) frames; `decode` gives them back as such an array; the
fingerprint is the perceptual hash of each of a few evenly spaced frames, concatenated; the
thumbnail and preview are strips of evenly spaced frames side by side. PyAV is imported
only when a clip is encoded or decoded.
"""

from __future__ import annotations

import functools
import io
import re
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from synthgen.schemas.media import VIDEO_FORMATS, Shape, sampled_frames, video_size_problem
from synthgen.storage.codecs.base import VideoCodec

PRESET = "medium"
FINGERPRINT_FRAMES = 4  # frames hashed for a clip's fingerprint (first and last among them)
STRIP_FRAMES = 4  # frames side by side in a thumbnail or preview strip
STRIP_GAP = (128, 128, 128)  # the grey line between frames of a strip
SEI_NAL_TYPE = 6  # H.264 NAL unit type of SEI messages (where x264 writes its version)


class VideoEncoding(BaseModel):
    """The options of a clip codec: the frame rate (the recipe's `sampling.fps`), the
    quality of the lossy codec and the key-frame interval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fps: int = Field(default=8, ge=1, le=240)
    crf: int = Field(default=18, ge=0, le=51, description="x264 constant rate factor (mp4)")
    gop: int = Field(default=16, ge=1, le=1000, description="frames per key frame")


class Mp4Codec(VideoCodec):
    """H.264 4:2:0 in MP4 (libx264, crf `options.crf`): lossy, even frame sizes only."""

    name = VIDEO_FORMATS["mp4"].name
    media_type = VIDEO_FORMATS["mp4"].media_type
    extension = VIDEO_FORMATS["mp4"].extension
    lossless = VIDEO_FORMATS["mp4"].lossless
    options_model = VideoEncoding
    encoder = "libx264"
    pix_fmt = "yuv420p"

    def rate_control(self) -> dict[str, str]:
        """The libx264 quality options."""
        return {"crf": str(self.options.crf)}

    def encoder_options(self) -> dict[str, str]:
        """Every libx264 option this codec sets (what makes its bytes reproducible)."""
        gop = self.options.gop
        params = f"keyint={gop}:scenecut=0:bframes=0:threads=1:lookahead-threads=1"
        return {"preset": PRESET, **self.rate_control(), "g": str(gop), "x264-params": params}

    def check_size(self, width: int, height: int) -> None:
        """Raise ValueError when frames of this size cannot be written in this format."""
        problem = video_size_problem(self.name, width, height)
        if problem is not None:
            raise ValueError(problem)

    def encode(self, pixels: Any, fps: int | None = None) -> bytes:
        """Encode uint8 (F, H, W, 3) frames at `fps` frames a second (None: the codec's
        `options.fps`): the same frames give the same bytes."""
        frames = _checked_frames(pixels)
        self.check_size(frames.shape[2], frames.shape[1])
        return _encode(self, frames, int(fps or self.options.fps))

    def to_video_frame(self, frame: np.ndarray) -> Any:
        """One (H, W, 3) frame as the PyAV frame the encoder takes (4:2:0 YUV)."""
        import av

        return av.VideoFrame.from_ndarray(rgb_to_yuv420(frame), format="yuv420p")

    def decode(self, data: bytes, limit: Shape | None = None) -> np.ndarray:
        """The clip's frames, uint8 (F, H, W, 3) (bounded by `limit`: `decode_frames`)."""
        return decode_frames(data, limit)

    def fingerprint(self, decoded: Any) -> str:
        """The 64-bit perceptual hash (hex) of each of FINGERPRINT_FRAMES evenly spaced
        frames, first and last among them, concatenated: clips compare by Hamming distance."""
        import imagehash
        from PIL import Image

        frames = np.asarray(decoded)
        picked = sampled_frames(len(frames), FINGERPRINT_FRAMES)
        return "".join(str(imagehash.phash(Image.fromarray(frames[i]))) for i in picked)

    def thumbnail(self, decoded: Any, size: int) -> Any:
        """A strip of STRIP_FRAMES evenly spaced frames, each at most `size` pixels on its
        long side."""
        return frame_strip(np.asarray(decoded), size)

    def preview(self, decoded: Any) -> Any:
        """A strip of STRIP_FRAMES evenly spaced frames at full size."""
        return frame_strip(np.asarray(decoded))

    @classmethod
    def recognises(cls, data: bytes) -> bool:
        return data[4:8] == b"ftyp"  # an ISO base media file (MP4)

    def identity(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.encoder_options().items())
        return f"{_libraries()}; {self.encoder} {self.pix_fmt} ({options}); SEI removed"

    def provenance(self) -> dict[str, Any]:
        """The encoding settings as a build records them (what regenerating a clip needs)."""
        return {
            "format": self.name,
            "fps": self.options.fps,
            **self.options.model_dump(exclude={"fps"}),
            "pix_fmt": self.pix_fmt,
            "encoder": self.identity(),
        }


class Mp4LosslessCodec(Mp4Codec):
    """H.264 RGB in MP4 (libx264rgb, qp 0): decodes to exactly the frames; any size."""

    name = VIDEO_FORMATS["mp4-lossless"].name
    lossless = VIDEO_FORMATS["mp4-lossless"].lossless
    encoder = "libx264rgb"
    pix_fmt = "rgb24"

    def rate_control(self) -> dict[str, str]:
        return {"qp": "0"}

    def to_video_frame(self, frame: np.ndarray) -> Any:
        import av

        return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "crf": None, "qp": 0}


def _checked_frames(pixels: Any) -> np.ndarray:
    frames = np.asarray(pixels)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(
            f"a clip is uint8 (frames, height, width, 3): got {frames.dtype} {frames.shape}"
        )
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"a clip needs at least one frame of one pixel: got {frames.shape}")
    return frames


def _encode(codec: Mp4Codec, frames: np.ndarray, fps: int) -> bytes:
    """The MP4 bytes of `frames` (checked) as `codec` encodes them."""
    import av

    buf = io.BytesIO()
    # the frames' clock; the muxer sets its own time base on the stream once it writes
    time_base = Fraction(1, fps)
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream: Any = out.add_stream(codec.encoder, rate=fps, options=codec.encoder_options())
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = codec.pix_fmt
        stream.time_base = time_base
        context = stream.codec_context
        context.thread_count = 1
        if codec.pix_fmt == "yuv420p":  # BT.601 limited range, as `rgb_to_yuv420` makes
            context.colorspace = context.color_primaries = context.color_trc = 6
            context.color_range = 1
        strip = _SeiStrip(out, stream)
        for index, frame in enumerate(frames):
            video_frame = codec.to_video_frame(frame)
            video_frame.pts = index
            video_frame.time_base = time_base
            strip.mux(stream.encode(video_frame))
        strip.mux(stream.encode(None))
        strip.flush()
    return buf.getvalue()


class _SeiStrip:
    """Muxes packets after removing their SEI units (x264's version and options text)."""

    def __init__(self, out: Any, stream: Any):
        self.out, self.stream = out, stream
        self.bsf: Any = None  # made at the first packet, once the encoder is open

    def mux(self, packets: Any) -> None:
        import av

        for packet in packets:
            if self.bsf is None:
                remove = f"filter_units=remove_types={SEI_NAL_TYPE}"
                self.bsf = av.bitstream.BitStreamFilterContext(remove, self.stream)
            self._write(self.bsf.filter(packet))

    def flush(self) -> None:
        if self.bsf is not None:
            self._write(self.bsf.filter(None))

    def _write(self, packets: Any) -> None:
        for packet in packets:
            packet.stream = self.stream
            self.out.mux(packet)


def decode_frames(data: bytes, limit: Shape | None = None) -> np.ndarray:
    """Every frame of an MP4's first video stream, uint8 (F, H, W, 3) (PyAV): 4:2:0 YUV
    converted by `yuv420_to_rgb`, any other pixel format by libswscale. With `limit`, bytes
    from elsewhere are bounded: a clip with more frames, or a frame larger, than `limit`
    raises ValueError before more is decoded."""
    import av

    frames: list[np.ndarray] = []
    with av.open(io.BytesIO(data), "r") as container:
        stream: Any = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one decoding thread, as one encoding thread
        for frame in container.decode(stream):
            if limit is not None:
                _within(limit, len(frames) + 1, frame.height, frame.width)
            even = frame.width % 2 == 0 and frame.height % 2 == 0
            if frame.format.name == "yuv420p" and even:
                frames.append(yuv420_to_rgb(frame.to_ndarray()))
            else:
                frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError("the MP4 holds no video frame")
    return np.stack(frames)


def _within(limit: Shape, frames: int, height: int, width: int) -> None:
    if frames > limit.frames or height > limit.height or width > limit.width:
        raise ValueError(
            f"the clip has a frame {frames} of {width}x{height}: more than the "
            f"{limit.frames} frames of {limit.width}x{limit.height} it may hold"
        )


def rgb_to_yuv420(rgb: np.ndarray) -> np.ndarray:
    """One uint8 (H, W, 3) frame (even H and W) as planar 4:2:0 YUV, (H * 3 / 2, W) as PyAV's
    `yuv420p` frames hold it (the Y, U and V planes one after the other, flat): BT.601
    limited range, integer arithmetic, each chroma sample the rounded mean of its 2x2
    pixels."""
    h, w = rgb.shape[:2]
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16

    def chroma(value: np.ndarray) -> np.ndarray:  # value: 256 x (chroma - 128) per pixel
        quads = value.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
        return np.clip(((quads + 512) >> 10) + 128, 0, 255)

    u = chroma(-38 * r - 74 * g + 112 * b)
    v = chroma(112 * r - 94 * g - 18 * b)
    planes = np.concatenate([p.ravel() for p in (y, u, v)])  # Y, then U, then V, each flat
    return planes.astype(np.uint8).reshape(h * 3 // 2, w)


def yuv420_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """A planar 4:2:0 frame, (H * 3 / 2, W) as PyAV gives it (even H and W), as uint8
    (H, W, 3) RGB: BT.601 limited range, integer arithmetic, chroma repeated over 2x2."""
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    y = yuv[:h].astype(np.int32) - 16
    u, v = (p.reshape(h // 2, w // 2) for p in np.split(yuv[h:].ravel(), 2))
    up = np.repeat(np.repeat(u.astype(np.int32) - 128, 2, axis=0), 2, axis=1)
    vp = np.repeat(np.repeat(v.astype(np.int32) - 128, 2, axis=0), 2, axis=1)
    r = (298 * y + 409 * vp + 128) >> 8
    g = (298 * y - 100 * up - 208 * vp + 128) >> 8
    b = (298 * y + 516 * up + 128) >> 8
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def frame_strip(frames: np.ndarray, size: int | None = None) -> Any:
    """STRIP_FRAMES evenly spaced frames of a clip side by side (a one-pixel grey line
    between them) as an RGB PIL image; with `size`, each frame at most that on its long side."""
    from PIL import Image

    picked = [Image.fromarray(frames[i]) for i in sampled_frames(len(frames), STRIP_FRAMES)]
    if size is not None:
        for image in picked:
            image.thumbnail((size, size))
    w, h = picked[0].size
    strip = Image.new("RGB", (len(picked) * (w + 1) - 1, h), STRIP_GAP)
    for i, image in enumerate(picked):
        strip.paste(image, (i * (w + 1), 0))
    return strip


@functools.lru_cache(maxsize=1)
def _libraries() -> str:
    """PyAV's version, its libavcodec's and libavformat's, and x264's core version (read
    from the SEI text x264 writes, in a one-frame clip made here)."""
    import av

    versions = av.library_versions
    lib = {k: ".".join(map(str, versions[k])) for k in ("libavcodec", "libavformat")}
    return (
        f"PyAV {av.__version__} (libavcodec {lib['libavcodec']}, libavformat "
        f"{lib['libavformat']}, x264 core {_x264_core()})"
    )


def _x264_core() -> str:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream: Any = out.add_stream("libx264", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((24, 16), np.uint8), format="yuv420p")
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    found = re.search(rb"x264 - core (\d+)", buf.getvalue())
    return found.group(1).decode() if found else "unknown"
