"""Build-wide provenance: computed once by the driver, shipped small to every writer.

`BuildContext` itself is declared with the sample record in `synthgen.schemas.records`
(each field once, with its Parquet type); this module adds what needs the environment.
"""

from __future__ import annotations

from importlib import metadata

from synthgen.schemas.records import BuildContext, canonical_json

__all__ = ["TRACKED_LIBRARIES", "BuildContext", "canonical_json", "library_versions"]

TRACKED_LIBRARIES = (
    "synthgen-corpus",
    "torch",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "apache-beam",
    "pyarrow",
    "webdataset",
    "numpy",
    "pillow",
)


def library_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
