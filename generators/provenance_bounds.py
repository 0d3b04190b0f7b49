"""Bounds on the numbers in a provenance record, before anything is loaded or allocated.

`regenerate` rebuilds a sample from provenance alone, so a tampered or corrupt record
(`compute_batch: 200000`, `width: 10**6`) would otherwise reach the model as an allocation.
The limits are the recipe schema's own (its pydantic field constraints), read from the
fields rather than repeated here, so they cannot drift from what a build accepts.
"""

from __future__ import annotations

import json
import numbers
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from synthgen.schemas.recipe import ModelSpec, Recipe, SamplingSpec, utf8_problem

# provenance field -> (recipe model, field name) whose constraints bound it. The per-sample
# seed is bounded like the recipe seed: both are 63-bit.
BOUNDED_FIELDS: dict[str, tuple[type[BaseModel], str]] = {
    "steps": (SamplingSpec, "steps"),
    "guidance_scale": (SamplingSpec, "guidance_scale"),
    "width": (SamplingSpec, "width"),
    "height": (SamplingSpec, "height"),
    "compute_batch": (ModelSpec, "compute_batch"),
    "seed": (Recipe, "seed"),
}
# Per-sample values that may be absent (older records) or null; bounded like the above.
OPTIONAL_BOUNDED_FIELDS: dict[str, tuple[type[BaseModel], str]] = {
    "sample_steps": (SamplingSpec, "steps"),
    "sample_guidance_scale": (SamplingSpec, "guidance_scale"),
}
TEXT_FIELDS = ("prompt", "negative_prompt")


@cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    constrained: Any = Annotated[(info.annotation, *info.metadata)]  # type: ignore[valid-type]
    return TypeAdapter(constrained)


def check_provenance_bounds(prov: dict[str, Any]) -> None:
    """Raise ValueError naming the first field that is missing, of the wrong type, or outside
    the recipe schema's limits (steps, guidance_scale, width, height, compute_batch, seed),
    or a prompt that is not valid UTF-8.
    """
    optional = {f: b for f, b in OPTIONAL_BOUNDED_FIELDS.items() if prov.get(f) is not None}
    for field, (model, name) in (BOUNDED_FIELDS | optional).items():
        if field not in prov:
            raise ValueError(f"provenance {field}: missing")
        value = prov[field]
        # numbers.* so numpy scalars from a Parquet row count; bool is no number here
        wants_int = model.model_fields[name].annotation is int
        kind = numbers.Integral if wants_int else numbers.Real
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"provenance {field}: expected {'an integer' if wants_int else 'a number'}, "
                f"got {value!r}"
            )
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        try:
            _adapter(model, name).validate_python(value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ValueError(
                f"provenance {field}: {value!r} is outside the recipe's limits: {msg}"
            ) from None
    _check_timesteps(prov)
    for field in TEXT_FIELDS:
        value = prov.get(field)
        if not isinstance(value, str):
            raise ValueError(f"provenance {field}: expected text, got {value!r}")
        problem = utf8_problem(value)
        if problem:
            raise ValueError(f"provenance {field}: {problem}")


def _check_timesteps(prov: dict[str, Any]) -> None:
    """Explicit timesteps in the generation options: as the recipe schema accepts them
    (its field and validator), and exactly one per recorded step, so an edited record
    cannot ask for more model calls than its `steps` says."""
    options = prov.get("generation_options")
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            raise ValueError("provenance generation_options: not JSON") from None
    timesteps = options.get("timesteps") if isinstance(options, dict) else None
    if timesteps is None:
        return
    try:
        SamplingSpec.model_validate({"steps": len(timesteps), "timesteps": timesteps})
    except (ValidationError, TypeError) as exc:
        raise ValueError(
            f"provenance timesteps: {timesteps!r} is outside the recipe's limits"
        ) from exc
    if len(timesteps) != prov.get("steps"):
        raise ValueError(
            f"provenance timesteps: {len(timesteps)} timesteps for {prov.get('steps')!r} steps"
        )
