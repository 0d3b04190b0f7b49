"""A feedback round's sampling-time guidance (`balance.feedback.guidance: feedback`), as the
generating workers receive it: the round's probe (read and checked on the driver, its bytes
shipped with the settings), the scoring CLIP model it differentiates through, and the
provenance every sample of the round records (so `regenerate` runs the same guidance)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from synthgen.generators.handler import GenerationSettings
from synthgen.pipelines.context import BuildContext
from synthgen.pipelines.resolve import ResolvedRecipe
from synthgen.schemas.manifest import PlanRound
from synthgen.schemas.records import canonical_json, public_path


def guided_round(
    resolved: ResolvedRecipe,
    settings: GenerationSettings,
    ctx: BuildContext,
    plan_round: PlanRound,
    out: Path,
) -> tuple[GenerationSettings, BuildContext]:
    """`settings` and `ctx` for this round: unchanged without guidance; with it, the probe
    file (checked against its recorded sha256) and CLIP folder in the settings, and the
    guidance in the recorded generation options."""
    g = plan_round.guidance
    if g is None:
        return settings, ctx
    from synthgen.generators.guidance import FeedbackGuidance
    from synthgen.pipelines.references import embedding_encoder
    from synthgen.validators.clip_folder import load_clip

    guidance = FeedbackGuidance.from_file(
        out / g.probe, g.criterion, g.scale, g.every, sha256=g.probe_sha256
    )
    clip = embedding_encoder(resolved.scorers)
    base = None if resolved.base_dir is None else str(resolved.base_dir)
    settings = dataclasses.replace(
        settings,
        guidance=guidance,
        guidance_probe=g.probe,
        guidance_clip=(clip.path, public_path(clip.path, base), clip.sha256),
        clip_loader=load_clip,
    )
    options = canonical_json(settings.generation_options())
    return settings, dataclasses.replace(ctx, generation_options=options)
