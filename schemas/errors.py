"""Input errors shared by every layer: each message names the file or field at fault."""

from __future__ import annotations


class ModelFolderError(ValueError):
    """A model folder is missing, malformed or holds something we refuse to load."""
