"""Where synthgen keeps what outlives one build on this machine — one rule for every cache.

`$SYNTHGEN_CACHE_DIR`, else `~/.cache/synthgen`. Under it: `references/` (embedded reference
sets shared by builds), `work/` and `builds/` (local working copies of object-store builds),
`sources/` (object-store sources read once), `previous/` (an earlier build, for the trend).
`SYNTHGEN_CACHE_DIR=off` turns the shared caches off (every build embeds its own reference
sets); working copies, which a remote build cannot do without, then stay under the default.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SYNTHGEN_CACHE_DIR"
_OFF = ("off", "none", "0")


def _setting() -> str | None:
    value = os.environ.get(CACHE_ENV, "").strip()
    return value or None


def caches_off() -> bool:
    """Whether the user turned the shared caches off."""
    value = _setting()
    return value is not None and value.lower() in _OFF


def cache_root() -> Path:
    """The cache root: `$SYNTHGEN_CACHE_DIR`, else (or when it is `off`) `~/.cache/synthgen`."""
    value = _setting()
    if value is None or caches_off():
        return Path.home() / ".cache" / "synthgen"
    return Path(value).expanduser()


def shared_cache(name: str) -> Path | None:
    """`<cache root>/<name>`, a cache builds share; None when the shared caches are off."""
    return None if caches_off() else cache_root() / name
