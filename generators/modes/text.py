"""`text`: the prompt alone; a class in this mode gets no conditioning settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthgen.generators.modes.base import ConditioningError, Mode, ModeParams, SourceRef
from synthgen.generators.modes.inputs import PoolImage, ResolveContext
from synthgen.generators.modes.worker import WorkerInputs
from synthgen.schemas.recipe import ConditioningSpec
from synthgen.schemas.records import GenerationRequest


class TextMode(Mode):
    name = "text"
    conditions = False

    def uses_source(self, spec: ConditioningSpec) -> bool:
        return False

    def resolve(
        self,
        ctx: ResolveContext,
        class_name: str,
        spec: ConditioningSpec,
        source: SourceRef | None,
        pool: Sequence[PoolImage],
    ) -> ModeParams:
        raise ConditioningError("conditioning.mode: text has no settings to resolve")

    def call_inputs(
        self, params: ModeParams, requests: Sequence[GenerationRequest], inputs: WorkerInputs
    ) -> dict[str, Any]:
        return {}
