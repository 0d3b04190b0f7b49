"""How accepted samples are written: shards, image or video format, C2PA content credentials."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from synthgen.schemas.media import DEFAULT_VIDEO_FORMAT, VIDEO_FORMATS, video_size_problem
from synthgen.schemas.recipe.common import SLUG_PATTERN, _Frozen
from synthgen.schemas.recipe.fields import HashOmit, RecipePath

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]

# `output.video_format`: the clip codecs by name (schemas.media.VIDEO_FORMATS)
VideoFormat = Literal["mp4", "mp4-lossless"]


class C2paSpec(_Frozen):
    """C2PA content credentials on every accepted image, signed with this certificate.

    The chain (PEM: the signing certificate first, then its intermediates) and the private
    key (PEM, unencrypted PKCS#8) are each named by a file path or by the *name* of an
    environment variable holding the PEM text; the key never enters the recipe, the
    manifest, provenance or logs.
    """

    cert_chain: RecipePath | None = Field(default=None, description="PEM certificate chain file")
    cert_chain_env: EnvName | None = Field(
        default=None, description="name of an environment variable holding the chain"
    )
    key: RecipePath | None = Field(default=None, description="PEM private key file")
    key_env: EnvName | None = Field(
        default=None, description="name of an environment variable holding the private key"
    )
    alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    timestamp_url: str | None = Field(
        default=None, description="RFC 3161 time-stamp authority (none: no time stamp)"
    )

    @model_validator(mode="after")
    def _one_source_each(self) -> C2paSpec:
        for what, path, env in (
            ("cert_chain", self.cert_chain, self.cert_chain_env),
            ("key", self.key, self.key_env),
        ):
            if (path is None) == (env is None):
                raise ValueError(f"c2pa: give exactly one of {what} or {what}_env")
        return self


class OutputSpec(_Frozen):
    shard_size: int = Field(
        default=1000, ge=1, description="samples per shard: the unit of output, memory and resume"
    )
    image_format: str = Field(
        default="png",
        pattern=SLUG_PATTERN,
        description="the image codec by name: png, webp or jpeg, or a codec plug-in's "
        "(checked against the codec registry before any work)",
    )
    png_compress_level: int = Field(default=1, ge=0, le=9)
    quality: int = Field(default=95, ge=1, le=100, description="webp/jpeg quality")
    writer: Annotated[str, HashOmit.IF_DEFAULT] = Field(
        default="webdataset",
        pattern=SLUG_PATTERN,
        description="the shard writer by name: `webdataset` (a tar and a Parquet table per "
        "shard) or a writer plug-in's",
    )
    video_format: Annotated[VideoFormat, HashOmit.IF_DEFAULT] = Field(
        default=DEFAULT_VIDEO_FORMAT,
        description="the clip codec of a video build (`sampling.num_frames` set): `mp4` "
        "(H.264 4:2:0, lossy, even sizes) or `mp4-lossless` (H.264 RGB at qp 0: decodes to "
        "exactly the frames generated); an image build takes only the default",
    )
    c2pa: Annotated[C2paSpec | None, HashOmit.IF_EMPTY] = Field(
        default=None, description="sign accepted images with C2PA content credentials"
    )

    @field_validator("image_format")
    @classmethod
    def _not_a_video_format(cls, v: str) -> str:
        if v in VIDEO_FORMATS:
            raise ValueError(
                f"{v} is a video format: set sampling.num_frames and output.video_format: {v}"
            )
        return v


def output_media_problem(
    output: OutputSpec, num_frames: int | None, width: int, height: int
) -> str | None:
    """Why `output` cannot write this build's media (None: it can): a video format other than
    the default in an image build (`num_frames` None), or a clip size the video format
    cannot hold (odd sizes in 4:2:0 `mp4`). The recipe's own validation calls it, so the
    problem is named before any work."""
    if num_frames is None:
        if output.video_format != DEFAULT_VIDEO_FORMAT:
            return (
                f"output.video_format {output.video_format} applies to video builds only: "
                "set sampling.num_frames, or remove output.video_format"
            )
        return None
    problem = video_size_problem(output.video_format, width, height)
    return None if problem is None else f"output.video_format {problem}"
