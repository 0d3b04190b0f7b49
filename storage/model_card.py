"""The licence a model folder's card declares (`README.md` YAML front matter), if any."""

from __future__ import annotations

from pathlib import Path

import yaml

from synthgen.schemas.recipe import RecipeError

MAX_CARD_BYTES = 1024 * 1024


class LicenseError(RecipeError):
    """The model card declares a licence the recipe has not acknowledged."""


def model_card_license(model_path: Path) -> str | None:
    """`license` from the front matter of `model_path/README.md` (safe YAML), or None."""
    card = model_path / "README.md"
    if not card.is_file():
        return None
    with card.open("rb") as f:
        text = f.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value not in (None, "") else None


def license_info(
    model_path: Path, recipe_license: str | None, license_ack: str | None, usage: str | None
) -> dict[str, str | None]:
    """The model's licence (model card first, else the recipe's) and the usage statement.

    Raises LicenseError when the card declares a licence that `license_ack` does not name
    (compared case-insensitively): nobody ships a corpus under terms they never read.
    """
    card = model_card_license(model_path)
    if card is not None and (license_ack or "").strip().lower() != card.strip().lower():
        raise LicenseError(
            f"{model_path}/README.md: the model card declares licence {card!r}; read it and "
            f"set model.license_ack: {card!r} to accept it (got {license_ack!r})"
        )
    source = "model_card" if card is not None else "recipe" if recipe_license else None
    return {"license": card or recipe_license, "license_source": source, "usage": usage}
