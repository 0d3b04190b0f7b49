"""The recipe hash: sha256 of the canonical JSON of the fields that affect the corpus, each
field's `HashOmit` marker deciding whether it is left out."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from synthgen.schemas.recipe.fields import hash_omit


def hashed_fields(model: BaseModel) -> dict[str, Any]:
    """`model` as JSON, less the fields its markers leave out (at any depth)."""
    out = _walk(model, model.model_dump(mode="json"))
    assert isinstance(out, dict)
    return out


def _walk(live: Any, dumped: Any) -> Any:
    """`dumped` (the JSON of `live`) less the omitted fields of every model inside it."""
    if isinstance(live, BaseModel) and isinstance(dumped, dict):
        fields = type(live).model_fields
        out = {k: v for k, v in dumped.items() if k not in fields}  # plug-in keys (extras)
        for name, info in fields.items():
            marker = hash_omit(info)
            if marker is None or not marker.omits(info, dumped[name]):
                out[name] = _walk(getattr(live, name), dumped[name])
        return out
    if isinstance(live, list | tuple) and isinstance(dumped, list):
        return [_walk(a, b) for a, b in zip(live, dumped, strict=True)]
    if isinstance(live, dict) and isinstance(dumped, dict):
        pairs = zip(live.values(), dumped.items(), strict=True)
        return {k: _walk(a, b) for a, (k, b) in pairs}
    return dumped


def digest(data: dict[str, Any]) -> str:
    """sha256 of `data` as canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
