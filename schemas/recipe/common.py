"""What every part of the recipe shares: slugs, the frozen base model, URL and text checks,
input bounds, the recipe error."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

# scheme://netloc path rest: a scheme of two letters or more (one is a Windows drive)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://([^/?#]*)([^?#]*)(.*)", re.DOTALL)


def is_url(value: str) -> bool:
    """Whether `value` is a URL (`scheme://...`): never a path relative to a folder."""
    return _URL.fullmatch(value) is not None


def shown_url(value: str) -> str:
    """`value` as a message may show it: a URL without its credentials, query or fragment
    (`s3://…@bucket/x?…`: the marks say something was left out, never what)."""
    m = _URL.fullmatch(value)
    if m is None:
        return value
    scheme, netloc, path, rest = m.groups()
    who = "…@" if "@" in netloc else ""
    return f"{scheme}://{who}{netloc.rsplit('@', 1)[-1]}{path}{'?…' if rest else ''}"


def url_problem(value: str) -> str | None:
    """Why a URL may not name a location (credentials, a query, a fragment); None if it may.

    Credentials belong to the provider's credential chain and a query can sign a request:
    either would travel into the recipe hash, the manifest and every message that names it.
    """
    m = _URL.fullmatch(value)
    if m is None:
        return None
    if "@" in m.group(2):
        return (
            "credentials inside a storage URL are refused; use the provider's standard "
            "credential chain (environment variables, config files, instance metadata)"
        )
    if m.group(4):
        return "query strings and fragments are not supported in a location (not shown)"
    return None


Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=64)]

# Input bounds, checked before any work so a hostile or mistyped recipe fails with a message
# instead of exhausting memory. A recipe file may be at most MAX_RECIPE_BYTES; its YAML may
# use anchors and aliases, but the document they expand to may hold at most MAX_YAML_NODES
# nodes (counted on the parsed graph, without expanding it) nested at most MAX_YAML_DEPTH deep;
# a recursive alias is refused. Sample counts are bounded per class and in total: planning
# streams shard by shard, so the bound guards runaway typos, not planner memory.
MAX_RECIPE_BYTES = 1024 * 1024
MAX_YAML_NODES = 1_000_000
MAX_YAML_DEPTH = 64
MAX_COUNT_PER_CLASS = 100_000_000
MAX_PLANNED_SAMPLES = 1_000_000_000


def utf8_problem(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (a lone surrogate, say), or None if it can.

    Tokenizers, Parquet and the tar `.txt` member all need UTF-8; a string that cannot be
    encoded would fail only after the model has loaded.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"not valid UTF-8 text: {text[exc.start : exc.end]!r} at position {exc.start} "
            "(a lone surrogate?)"
        )
    return None


class RecipeError(ValueError):
    """A recipe could not be read or is invalid; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)
