"""Apply checks to a sample: record every outcome; the first failing check is the reason."""

from __future__ import annotations

from collections.abc import Sequence

from synthgen.schemas.records import ACCEPTED, REJECTED, Sample
from synthgen.validators.base import Check


def apply_checks(sample: Sample, checks: Sequence[Check], duplicate: str | None = None) -> Sample:
    """Record every check's outcome; a build-wide duplicate verdict ranks first."""
    first: str | None = None
    if duplicate is not None:
        first = duplicate
    sample.checks["duplicate"] = duplicate or "pass"
    for check in checks:
        reason = check.reason(sample)
        sample.checks[check.name] = "pass" if reason is None else reason
        if reason is not None and first is None:
            first = reason
    sample.status = ACCEPTED if first is None else REJECTED
    sample.reject_reason = first
    return sample
