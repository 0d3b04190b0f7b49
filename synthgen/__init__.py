"""synthgen: build synthetic image (and video clip) corpora for training.

The installed namespace: `synthgen.schemas` (data contracts), `synthgen.storage` (files),
`synthgen.generators` (planning, models, conditioning), `synthgen.validators` (scorers,
checks, corpus validation, report) and `synthgen.pipelines` (Beam composition, the build
session, the CLI). `synthgen.build` and `synthgen.load` are the Python API (synthgen.api).
Importing `synthgen` itself is cheap: nothing heavy is loaded until it is used.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

DISTRIBUTION = "synthgen-corpus"


def _not_beams_apitools_notice(record: logging.LogRecord) -> bool:
    """Beam's import warns on the root logger that Google Cloud client libraries are
    missing (`apitools not found`): only its GCP connectors need them. Every synthgen module
    that imports Beam is imported after this package, so the notice never shows; every other
    record passes."""
    return not (record.name == "root" and record.getMessage().startswith("apitools not found"))


logging.getLogger().addFilter(_not_beams_apitools_notice)

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "build", "load"]


def __getattr__(name: str) -> Any:
    if name in ("build", "load", "Corpus", "BalancedIndex", "BalancedSample", "Clip"):
        from synthgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthgen' has no attribute {name!r}")
