"""Failed samples: an exception while generating, scoring or encoding one sample becomes a
row with `status=failed`, `reject_reason=error:<ExceptionType>` and a short message, never a
failed build (within the recipe's `validation.max_failed_fraction`).

The message is one line of at most `MESSAGE_CHARS` characters, with every path-like token
replaced by `<path>`: a Parquet row must not carry a traceback or where files live.
"""

from __future__ import annotations

import dataclasses
import re

from synthgen.schemas.media import NO_MEDIA
from synthgen.schemas.records import FAILED, GenerationRequest, Sample

ERROR_PREFIX = "error:"
MESSAGE_CHARS = 200

# A token holding a slash or backslash (a path or URL), or a drive-letter path.
_PATH_TOKEN = re.compile(r"""[^\s'"`()\[\]{}<>,;]*[\\/][^\s'"`()\[\]{}<>,;]*|\b[A-Za-z]:\\\S*""")
_SPACE = re.compile(r"\s+")


def error_reason(exc: BaseException) -> str:
    """`error:<ExceptionType>`: the reject reason of a sample that failed with `exc`."""
    return f"{ERROR_PREFIX}{type(exc).__name__}"


def error_message(exc: BaseException, limit: int = MESSAGE_CHARS) -> str:
    """`exc`'s message on one line, paths replaced by `<path>`, at most `limit` characters."""
    text = _SPACE.sub(" ", _PATH_TOKEN.sub("<path>", str(exc))).strip()
    if not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def failed_sample(request: GenerationRequest, exc: BaseException) -> Sample:
    """The failed row of a sample whose generation (or encoding) raised `exc`: no image."""
    return Sample(
        request=request,
        image_sha256="",
        media=NO_MEDIA,
        status=FAILED,
        reject_reason=error_reason(exc),
        error_message=error_message(exc),
    )


def failed_copy(sample: Sample, exc: BaseException) -> Sample:
    """A generated sample that failed a later step (scoring): its image dropped, its scores
    cleared; its sha256 and size are kept as a record of what was generated."""
    return dataclasses.replace(
        sample,
        media=sample.media.with_data(b""),
        scores={},
        checks={},
        status=FAILED,
        reject_reason=error_reason(exc),
        error_message=error_message(exc),
    )


def is_failed(sample: Sample) -> bool:
    return sample.status == FAILED
