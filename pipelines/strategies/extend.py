"""Extend a complete build: more samples per class, new classes or prompts; old shards kept.

The parent's shards are taken into the new build byte for byte (hard-linked or copied, every
file checked against the parent's manifest); only new keys are planned, into new shards
numbered after the parent's. Build-wide checks of the new samples see every old sample
(an old sample is never re-decided, so a new duplicate of it is the one rejected); per-class
quantile cuts are computed over old and new samples together and apply to the new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.pipelines.output import (
    BuildError,
    identity_changes,
    recipe_diff,
    recorded_identity,
)
from synthgen.pipelines.resolve import ResolvedRecipe
from synthgen.pipelines.session import BuildSession
from synthgen.pipelines.strategies.base import Strategy
from synthgen.schemas.manifest import MANIFEST_NAME, Manifest, PlanRound
from synthgen.schemas.recipe import Recipe, recipe_from_dict

# What an extension may change; everything else must equal the parent's recipe.
GROWABLE = ("count_per_class", "classes", "batch_size")


def check_extension(parent: Recipe, child: Recipe) -> None:
    """Refuse, by field name, a recipe change that is not an extension of `parent`."""
    if parent.balance is not None or child.balance is not None:
        raise BuildError("--extend: only fixed-count builds can be extended (no balance block)")
    a = {k: v for k, v in parent.model_dump(mode="json").items() if k not in GROWABLE}
    b = {k: v for k, v in child.model_dump(mode="json").items() if k not in GROWABLE}
    changed = list(recipe_diff(a, b))
    if changed:
        raise BuildError(
            f"--extend: not an extension: {', '.join(changed)} changed; an extension may only "
            "raise count_per_class, add classes, or append prompts"
        )
    assert parent.count_per_class is not None and child.count_per_class is not None
    if child.count_per_class < parent.count_per_class:
        raise BuildError(
            f"--extend: count_per_class lowered ({parent.count_per_class} -> "
            f"{child.count_per_class}); an extension only adds samples"
        )
    new = {c.id: c for c in child.classes}
    for old in parent.classes:
        c = new.get(old.id)
        if c is None or c.name != old.name:
            raise BuildError(f"--extend: class {old.id} ({old.name}) is missing or renamed")
        if c.prompts[: len(old.prompts)] != old.prompts:
            raise BuildError(
                f"--extend: class {old.name}: prompts may only be appended, not changed"
            )


class Extend(Strategy):
    """Inherit the parent's shards, then one round of the new keys."""

    def __init__(self, resolved: ResolvedRecipe, parent: Path):
        super().__init__(resolved)
        self.parent = parent
        self._planned = False

    def prepare(self) -> None:
        """1. the parent is a complete build 2. the recipe extends its recipe."""
        path = self.parent / MANIFEST_NAME
        if not path.is_file():
            raise BuildError(f"--extend {self.parent}: no {MANIFEST_NAME}: not a complete build")
        self.manifest = Manifest.model_validate_json(path.read_bytes())
        if self.manifest.status != "complete":
            raise BuildError(f"--extend {self.parent}: the build ended as {self.manifest.status!r}")
        check_extension(recipe_from_dict(self.manifest.recipe, str(path)), self.recipe)
        constants = self._check_row_schema()
        self._check_identity(constants)

    def _check_row_schema(self) -> dict[str, Any]:
        """The parent's shards must be in the row schema this version writes (one corpus);
        the build constants of its first shard."""
        import pyarrow.parquet as pq

        from synthgen.schemas.records import read_build_constants

        for entry in self.manifest.shards[:1]:
            name = next(n for n in entry.files if n.endswith(".parquet"))
            try:
                return read_build_constants(pq.read_schema(self.parent / name))
            except (ValueError, OSError) as exc:
                raise BuildError(
                    f"--extend {self.parent}: {name}: {exc}; rebuild the parent with this "
                    "version of synthgen"
                ) from None
        return {}

    def _check_identity(self, constants: dict[str, Any]) -> None:
        """The recipe names paths; the parent's samples were made by what was behind them.
        Its identity (model and scorer content hashes from its manifest, adapters from its
        shards' build constants, the rest from its state) must be what the paths hold now,
        as for --resume: one corpus, one model."""
        from synthgen.generators.adapters import table_identity

        recorded = recorded_identity(self.parent, self.manifest)
        if constants.get("adapters"):
            recorded |= table_identity(constants["adapters"])  # decoded from JSON text
        changed = identity_changes(recorded, self.resolved.identity())
        if changed:
            what = ", ".join(f"{k} {a[:12]} -> {b[:12]}" for k, (a, b) in changed.items())
            raise BuildError(
                f"--extend {self.parent}: the content behind the recipe's paths changed since "
                f"the parent was built ({what}): its samples were made with other weights or "
                "configs, so the new ones would not belong to the same corpus; build anew "
                "instead of extending"
            )

    def begin(self, session: BuildSession) -> None:
        session.inherit(self.parent, self.manifest)

    def next_round(self) -> PlanRound | None:
        if self._planned:
            return None
        self._planned = True
        parent = recipe_from_dict(self.manifest.recipe)
        assert parent.count_per_class is not None and self.recipe.count_per_class is not None
        start = {c.id: parent.count_per_class for c in parent.classes}
        counts = {c.id: self.recipe.count_per_class for c in self.recipe.classes}
        start = {c: start.get(c, 0) for c in counts}
        if counts == start:
            return None
        return PlanRound(
            round=1,
            counts=counts,
            start=start,
            shard_offset=max(self.manifest.shard_ids, default=-1) + 1,
        )
