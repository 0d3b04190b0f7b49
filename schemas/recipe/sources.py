"""Labelled image sets a recipe reads: the balance source, the reference, the eval set and
the images conditioning starts from share one way of reading (Parquet, WebDataset shards or
class folders; the label and image columns; how labels are read)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from synthgen.schemas.recipe.common import _Frozen
from synthgen.schemas.recipe.fields import RecipePath

# `auto` (guessed from the location), `parquet`, `webdataset`, `folder`, or a source plug-in's
# format name (`synthgen.generators.sources`), checked against the registry before any work.
SourceFormat = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$", max_length=64)]
LOCATION_DESCRIPTION = "Parquet, WebDataset shards, or image folder"


class LabelledSource(_Frozen):
    """How a labelled image set is read; its location is the `source` (or `path`) field of
    the block that reads it (declared first by `AtSource` / `AtPath`)."""

    format: SourceFormat = "auto"
    label_column: str = "label"
    image_column: str = "image"
    label_type: Literal["auto", "name", "id"] = Field(
        default="auto",
        description="how source labels are read: as class names, as class ids, or `auto` "
        "(either; a label that names one class and is the id of another is refused)",
    )


class AtSource(_Frozen):
    """A labelled source located by its `source` field."""

    source: RecipePath = Field(min_length=1, description=LOCATION_DESCRIPTION)

    @property
    def location(self) -> str:
        """Where the images are (a path, a glob or brace pattern, or a URL)."""
        return self.source


class AtPath(_Frozen):
    """A labelled source located by its `path` field."""

    path: RecipePath = Field(min_length=1, description=LOCATION_DESCRIPTION)

    @property
    def location(self) -> str:
        """Where the images are (a path, a glob or brace pattern, or a URL)."""
        return self.path


class ReferenceSpec(LabelledSource, AtSource):
    """A labelled image set the corpus is measured against (read like a balance source)."""

    max_images: int = Field(
        default=100_000, ge=1, le=10_000_000, description="read at most this many images"
    )
