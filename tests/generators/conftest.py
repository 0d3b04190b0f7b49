"""Fixtures shared by the generator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import synthgen.generators.model_folder as model_folder


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts model loads: every generation loads the pipeline first."""
    calls: list[str] = []
    real = model_folder.load_pipeline

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(model_folder, "load_pipeline", counting)
    return calls
