"""synthgen: build synthetic image corpora for training.

The installed namespace: `synthgen.schemas` (data contracts), `synthgen.storage` (files),
`synthgen.generators` (planning, models, conditioning), `synthgen.validators` (scorers,
checks, corpus validation, report) and `synthgen.pipelines` (Beam composition, the build
session, the CLI). Importing `synthgen` itself is cheap: nothing heavy is loaded.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "synthgen-corpus"

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
