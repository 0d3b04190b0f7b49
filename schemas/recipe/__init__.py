"""The recipe: what a build makes. Validated, frozen, hashed; no I/O beyond reading the YAML.

One module per part of the recipe (model, sampling, classes, scoring, checks, safety,
balance, sources, conditioning, output, validation; `recipe` holds `Recipe` itself), and
beside them: the field markers (`fields`), the hash (`hashing`), safe YAML (`yaml_safe`),
`--set` overrides (`overrides`), error messages (`errors`) and loading (`loading`).
"""

from __future__ import annotations

from synthgen.schemas.recipe.balance import (
    BALANCE_IMG2IMG_STRENGTH,
    BalanceConditioning,
    BalanceMixMode,
    BalanceSpec,
    LoraTrainSpec,
)
from synthgen.schemas.recipe.checks import (
    ChecksSpec,
    ColumnThreshold,
    NearCopySpec,
    NearDuplicateSpec,
    SemanticDuplicateSpec,
    Threshold,
)
from synthgen.schemas.recipe.classes import ClassSpec, SlotValues
from synthgen.schemas.recipe.common import (
    MAX_COUNT_PER_CLASS,
    MAX_PLANNED_SAMPLES,
    MAX_RECIPE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    SLUG_PATTERN,
    RecipeError,
    Slug,
    is_url,
    shown_url,
    url_problem,
    utf8_problem,
)
from synthgen.schemas.recipe.conditioning import (
    PREPROCESSORS,
    ConditioningMode,
    ConditioningSourceSpec,
    ConditioningSpec,
    ControlNetSpec,
    IPAdapterSpec,
    PreprocessorSpec,
)
from synthgen.schemas.recipe.errors import did_you_mean, format_validation_error
from synthgen.schemas.recipe.fields import FieldPatterns, HashOmit, IsPath, RecipePath, path_fields
from synthgen.schemas.recipe.hashing import hashed_fields
from synthgen.schemas.recipe.loading import (
    load_recipe,
    load_recipe_source,
    read_recipe_dict,
    recipe_from_dict,
    resolve_path,
)
from synthgen.schemas.recipe.model import AdapterSpec, ModelSpec
from synthgen.schemas.recipe.output import C2paSpec, EnvName, OutputSpec
from synthgen.schemas.recipe.overrides import PATH_FIELDS, apply_overrides, parse_override
from synthgen.schemas.recipe.recipe import Recipe
from synthgen.schemas.recipe.safety import (
    DEFAULT_SAFETY_CONCEPTS,
    SafetyConcept,
    SafetySpec,
    blocklist_match,
)
from synthgen.schemas.recipe.sampling import SCHEDULERS, GuidanceJitter, SamplingSpec
from synthgen.schemas.recipe.scoring import ScorerSpec, ScoringSpec
from synthgen.schemas.recipe.sources import (
    AtPath,
    AtSource,
    LabelledSource,
    ReferenceSpec,
    SourceFormat,
)
from synthgen.schemas.recipe.validation import METRIC_NAMES, MetricGate, ValidationSpec
from synthgen.schemas.recipe.yaml_safe import check_yaml_budget, safe_load

__all__ = [
    "BALANCE_IMG2IMG_STRENGTH",
    "DEFAULT_SAFETY_CONCEPTS",
    "MAX_COUNT_PER_CLASS",
    "MAX_PLANNED_SAMPLES",
    "MAX_RECIPE_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "METRIC_NAMES",
    "PATH_FIELDS",
    "PREPROCESSORS",
    "SCHEDULERS",
    "SLUG_PATTERN",
    "AdapterSpec",
    "AtPath",
    "AtSource",
    "BalanceConditioning",
    "BalanceMixMode",
    "BalanceSpec",
    "C2paSpec",
    "ChecksSpec",
    "ClassSpec",
    "ColumnThreshold",
    "ConditioningMode",
    "ConditioningSourceSpec",
    "ConditioningSpec",
    "ControlNetSpec",
    "EnvName",
    "FieldPatterns",
    "GuidanceJitter",
    "HashOmit",
    "IPAdapterSpec",
    "IsPath",
    "LabelledSource",
    "LoraTrainSpec",
    "MetricGate",
    "ModelSpec",
    "NearCopySpec",
    "NearDuplicateSpec",
    "OutputSpec",
    "PreprocessorSpec",
    "Recipe",
    "RecipeError",
    "RecipePath",
    "ReferenceSpec",
    "SafetyConcept",
    "SafetySpec",
    "SamplingSpec",
    "ScorerSpec",
    "ScoringSpec",
    "SemanticDuplicateSpec",
    "SlotValues",
    "Slug",
    "SourceFormat",
    "Threshold",
    "ValidationSpec",
    "apply_overrides",
    "blocklist_match",
    "check_yaml_budget",
    "did_you_mean",
    "format_validation_error",
    "hashed_fields",
    "is_url",
    "load_recipe",
    "load_recipe_source",
    "parse_override",
    "path_fields",
    "read_recipe_dict",
    "recipe_from_dict",
    "resolve_path",
    "safe_load",
    "shown_url",
    "url_problem",
    "utf8_problem",
]
