"""The check interface: a check answers keep (None) or drop with a reason."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from synthgen.schemas.records import Sample

PASS = "pass"


class Check(ABC):
    """One per-sample check. `name` is the key in the sample's `checks` provenance."""

    name: str

    @abstractmethod
    def reason(self, sample: Sample) -> str | None:
        """None to keep the sample, else a short reject reason (e.g. `clip_score_below_0.2`)."""


class PixelCheck(Check):
    """A check that reads an image's pixels.

    It runs with each image's host work, on the pixels already in memory (no decoding; a
    lossy format is decoded once for it and the scorers), and its outcome is recorded in the
    sample's `checks`. `reason` then answers from the record; a sample with none (scored
    outside a build) has its stored image decoded.
    """

    @abstractmethod
    def pixel_reason(self, sample: Sample, pixels: Any) -> str | None:
        """None to keep, else the reject reason, from uint8 (H, W, 3) `pixels`."""

    def reason(self, sample: Sample) -> str | None:
        recorded = sample.checks.get(self.name)
        if recorded is not None:
            return None if recorded == PASS else recorded
        import numpy as np

        from synthgen.storage.images import decode_image

        return self.pixel_reason(sample, np.asarray(decode_image(sample.image)))


def record_pixel_checks(sample: Sample, pixels: Any, checks: Sequence[Check]) -> Sample:
    """`sample` with the outcome of every pixel check among `checks` recorded in `checks`."""
    found = {
        c.name: c.pixel_reason(sample, pixels) or PASS for c in checks if isinstance(c, PixelCheck)
    }
    return dataclasses.replace(sample, checks={**sample.checks, **found}) if found else sample
