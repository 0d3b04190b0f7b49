"""Apply checks to a sample: record every outcome; the first failing check is the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from synthgen.schemas.records import ACCEPTED, REJECTED, Sample
from synthgen.validators.base import Check


def apply_checks(sample: Sample, checks: Sequence[Check], duplicate: str | None = None) -> Sample:
    """A decided copy of `sample` (the input is not changed): every check's outcome recorded
    in `checks`, a build-wide duplicate verdict ranking first."""
    outcomes = dict(sample.checks)
    outcomes["duplicate"] = duplicate or "pass"
    first = duplicate
    for check in checks:
        reason = check.reason(sample)
        outcomes[check.name] = "pass" if reason is None else reason
        if reason is not None and first is None:
            first = reason
    return dataclasses.replace(
        sample,
        checks=outcomes,
        status=ACCEPTED if first is None else REJECTED,
        reject_reason=first,
    )
